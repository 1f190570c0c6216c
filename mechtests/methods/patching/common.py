"""What every patching engine shares: the result, the readout, the window checks, batching.

Layout (see :mod:`mechtests.methods.patching`): ``ld[pair, layer, column]``, column ``j`` of a
width-``W`` window is the position ``-(W - j)``; a pair whose window is narrower
(``widths[i] < W``) gets NaN in its first ``W - widths[i]`` columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechtests.engine.backend import Backend, Batch
from mechtests.phases import PATCHING_PHASES, timed_phase
from mechtests.sites import site_name

__all__ = [
    "PatchResult",
    "Readout",
    "check_source",
    "check_sources",
    "check_widths",
    "chunks",
    "clean_logit_diffs",
    "group_by_length",
    "logit_diff",
    "resid_sites",
    "true_activations",
    "window_positions",
]

Readout = tuple[int, int]
"""Token ids ``(t, f)`` of ``LD = logit(t) - logit(f)`` (the paper's " TRUE", " FALSE")."""


@dataclass(frozen=True)
class PatchResult:
    """A batch of pairs' patching heatmaps on one target model."""

    ld: torch.Tensor  # [pair, layer, column] float64, NaN outside a pair's window
    ld_false: torch.Tensor  # [pair] float64: the target's unpatched FALSE logit difference
    engine: str  # which engine produced ``ld`` ("suffix", "sweep", "loop")
    note: str = ""  # why the fast engine was not used, if it was not


def resid_sites(n_layers: int) -> list[str]:
    """``blocks.{l}.hook_resid_post`` for every layer (the paper's patching sites)."""
    return [site_name(layer, "hook_resid_post") for layer in range(n_layers)]


def window_positions(width: int) -> list[int]:
    """The last ``width`` positions, in reading order: ``[-width, ..., -1]``."""
    return list(range(-width, 0))


def logit_diff(logits_last: torch.Tensor, readout: Readout) -> torch.Tensor:
    """``LD`` of last-position logits ``[..., vocab]``: float64 on CPU."""
    t, f = readout
    return (logits_last[..., t].double() - logits_last[..., f].double()).cpu()


def check_widths(n: int, width: int, widths: Sequence[int] | None) -> list[int]:
    """Each pair's window width (all ``width`` when ``widths`` is None), checked to be ``n``
    values in ``1 .. width``."""
    out = [width] * n if widths is None else [int(w) for w in widths]
    if len(out) != n or any(not 1 <= w <= width for w in out):
        raise ValueError(f"widths must be {n} values in 1..{width}, got {widths!r}")
    return out


def check_source(source: Sequence[torch.Tensor], n_pairs: int, n_layers: int) -> int:
    """The window width ``W`` of a source (one ``[pair, W, d]`` tensor per layer), checked
    against the pairs and the target's layers."""
    if len(source) != n_layers:
        raise ValueError(f"source has {len(source)} layers, the target model {n_layers}")
    shapes = {tuple(s.shape) for s in source}
    if len(shapes) != 1:
        raise ValueError(f"source layers differ in shape: {sorted(shapes)}")
    n, width, _ = next(iter(shapes))
    if n != n_pairs:
        raise ValueError(f"source has {n} prompts, expected {n_pairs}")
    return int(width)


def check_sources(sources: Sequence[Sequence[torch.Tensor]], n_pairs: int, n_layers: int
                  ) -> int:
    """:func:`check_source` for each of several sources, which must share one window width."""
    width = {check_source(source, n_pairs, n_layers) for source in sources}
    if len(width) != 1:
        raise ValueError(f"sources differ in window width: {sorted(width)}")
    return width.pop()


def group_by_length(backend: Backend, prompts: Sequence[str]
                    ) -> tuple[Batch, dict[int, list[int]]]:
    """The prompts tokenized (left-padded) and their indices grouped by token length, so that
    each group runs without padding (``input_ids[group][:, -length:]``)."""
    batch = backend.tokenize(list(prompts))
    lengths = batch.attention_mask.sum(1).tolist()
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    return batch, groups


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def true_activations(
    backend: Backend, prompts: Sequence[str], width: int, batch_size: int = 32
) -> list[torch.Tensor]:
    """The TRUE prompts' residual after every block at the last ``width`` positions:
    one float32 CPU tensor ``[prompt, width, d]`` per layer (what the store also holds)."""
    from mechtests.engine.collect import collect_activations

    sites = resid_sites(backend.n_layers)
    acts = collect_activations(
        backend, prompts, sites, window_positions(width), batch_size=batch_size,
        progress=False
    )
    return [acts[s] for s in sites]


@timed_phase("patching sweep", inside=PATCHING_PHASES)
def clean_logit_diffs(
    backend: Backend, prompts: Sequence[str], readout: Readout, batch_size: int = 32
) -> torch.Tensor:
    """Unpatched ``LD`` at the last token of each prompt, float64 ``[prompt]``."""
    out = []
    for start in range(0, len(prompts), batch_size):
        logits = backend.forward(backend.tokenize(prompts[start : start + batch_size]),
                                  last_only=True)
        out.append(logit_diff(logits[:, -1], readout))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
