"""Counterfactual activation patching over (layer, position) sites, batched.

The method of Du et al. (paper code Knowledge+Truthfulness/patching.py:patching_one_model,
``patching.py:patching_one_model``): for a pair of
prompts (TRUE statement, FALSE statement) of equal token length and every site ``(l, p)``, run the
FALSE prompt with the residual stream after block ``l`` (``blocks.l.hook_resid_post``, nnsight
``layers[l].output[0]``) at position ``p`` replaced by the TRUE run's value there, and read
``LD = logit(" TRUE") - logit(" FALSE")`` at the last position. Cross-model patching
(section 3) is the same with the TRUE activations taken from another model; they come in as a
tensor, so only the target model is ever in memory.

Heatmap layout everywhere: ``ld[pair, layer, column]`` where column ``j`` of a width-``W`` window
is the position ``-(W - j)`` (reading order, the last column is the last token). A pair whose
window is narrower (``widths[i] < W``) gets NaN in its first ``W - widths[i]`` columns.

Three engines compute the same numbers:

* :func:`patch_loop` - the reference: one forward per site at batch 1, through the backend
  protocol (the paper's loop).
* :func:`patch_sweep` - protocol only: many sites per forward, each batch row a copy of a
  FALSE prompt, one hook per layer writing the TRUE activation into its rows at their positions.
  It works on any backend but does the full forward for every site.
* :func:`patch_suffix` - the fast engine for HuggingFace decoders of the Llama, Mistral, Qwen2,
  Qwen3, Gemma-2 and Gemma-3 families (:mod:`mechtests.methods.patching_suffix`, blocks in
  :mod:`mechtests.methods.suffix_blocks`). A site's patch changes
  nothing below its layer and, with causal attention, nothing before its position. So the FALSE
  prompts run once (keeping every layer's residual and key/value cache); then, per column
  (position ``-p``), one sweep up the stack runs every layer's site of that column for a batch of
  pairs (and every source, :func:`patch_heatmaps_many`): only the last ``p`` tokens go through
  blocks ``l+1 ..``, attending to the cached FALSE prefix. Cells of the last layer at non-final
  positions, and sites whose TRUE value equals (bit for bit) the FALSE run's value there
  (self-patching before the first differing token), are ``LD_F`` without compute. The backend
  protocol has no "start at layer l" call, so this engine uses the HF modules of the hooks
  backend directly (read-only). It is checked against :func:`patch_sweep` on a few sites before
  use (``verify``), and :func:`patch_heatmaps` falls back to the sweep when it does not apply.

Example:
    >>> src = true_activations(backend, true_prompts, width=14)         # doctest: +SKIP
    >>> res = patch_heatmaps(backend, false_prompts, src, (t_id, f_id))  # doctest: +SKIP
    >>> res.ld.shape, res.engine                                         # doctest: +SKIP
    (torch.Size([100, 32, 14]), 'suffix')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechtests.engine.backend import Backend, Batch, Hook
from mechtests.errors import MechTestsError
from mechtests.sites import site_name

__all__ = [
    "ENGINES",
    "PatchResult",
    "clean_logit_diffs",
    "patch_heatmaps",
    "patch_heatmaps_many",
    "patch_loop",
    "patch_suffix",
    "patch_sweep",
    "resid_sites",
    "true_activations",
]

ENGINES = ("auto", "suffix", "sweep", "loop")
Readout = tuple[int, int]


class SuffixEngineUnavailable(MechTestsError):
    """The backend's model is not one the suffix engine supports (the sweep is used instead)."""


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


def _positions(width: int) -> list[int]:
    return list(range(-width, 0))


def _ld(logits_last: torch.Tensor, readout: Readout) -> torch.Tensor:
    t, f = readout
    return (logits_last[..., t].double() - logits_last[..., f].double()).cpu()


def _widths(n: int, width: int, widths: Sequence[int] | None) -> list[int]:
    out = [width] * n if widths is None else [int(w) for w in widths]
    if len(out) != n or any(not 1 <= w <= width for w in out):
        raise ValueError(f"widths must be {n} values in 1..{width}, got {widths!r}")
    return out


def _check_source(source: Sequence[torch.Tensor], n_pairs: int, n_layers: int) -> int:
    if len(source) != n_layers:
        raise ValueError(f"source has {len(source)} layers, the target model {n_layers}")
    shapes = {tuple(s.shape) for s in source}
    if len(shapes) != 1:
        raise ValueError(f"source layers differ in shape: {sorted(shapes)}")
    n, width, _ = next(iter(shapes))
    if n != n_pairs:
        raise ValueError(f"source has {n} prompts, expected {n_pairs}")
    return int(width)


def _check_sources(sources: Sequence[Sequence[torch.Tensor]], n_pairs: int, n_layers: int
                   ) -> int:
    """:func:`_check_source` for each of several sources, which must share one window width."""
    width = {_check_source(source, n_pairs, n_layers) for source in sources}
    if len(width) != 1:
        raise ValueError(f"sources differ in window width: {sorted(width)}")
    return width.pop()


def true_activations(
    backend: Backend, prompts: Sequence[str], width: int, batch_size: int = 32
) -> list[torch.Tensor]:
    """The TRUE prompts' residual after every block at the last ``width`` positions:
    one float32 CPU tensor ``[prompt, width, d]`` per layer (what the store also holds)."""
    from mechtests.engine.collect import collect_activations

    sites = resid_sites(backend.n_layers)
    acts = collect_activations(
        backend, prompts, sites, _positions(width), batch_size=batch_size, progress=False
    )
    return [acts[s] for s in sites]


def clean_logit_diffs(
    backend: Backend, prompts: Sequence[str], readout: Readout, batch_size: int = 32
) -> torch.Tensor:
    """Unpatched ``LD`` at the last token of each prompt, float64 ``[prompt]``."""
    out = []
    for start in range(0, len(prompts), batch_size):
        logits = backend.forward(backend.tokenize(prompts[start : start + batch_size]),
                                  last_only=True)
        out.append(_ld(logits[:, -1], readout))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# -- reference loop ---------------------------------------------------------------------------
def _set_rows(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> Callable[..., Any]:
    def hook(act: torch.Tensor) -> torch.Tensor:
        new = act.clone()
        new[rows.to(act.device), cols.to(act.device)] = values.to(act.device, act.dtype)
        return new

    return hook


def patch_loop(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """The reference engine: one batch-1 forward per (pair, layer, position), as the paper.

    ``source[l]`` is ``[pair, W, d]``: the TRUE activation after block ``l`` at the last ``W``
    positions. Returns ``ld [pair, layer, W]`` (float64; NaN outside a pair's window or for
    layers not in ``layers``).
    """
    n_layers = backend.n_layers
    width = _check_source(source, len(false_prompts), n_layers)
    wids = _widths(len(false_prompts), width, widths)
    todo = range(n_layers) if layers is None else layers
    ld = torch.full((len(false_prompts), n_layers, width), float("nan"), dtype=torch.float64)
    for i, prompt in enumerate(false_prompts):
        batch = backend.tokenize([prompt])
        length = int(batch.input_ids.shape[1])
        for layer in todo:
            for j in range(width - wids[i], width):
                pos = torch.tensor([length - (width - j)])
                hook = _set_rows(torch.tensor([0]), pos, source[layer][i, j][None])
                logits = backend.forward(batch, [(site_name(layer, "hook_resid_post"), hook)],
                                         last_only=True)
                ld[i, layer, j] = _ld(logits[0, -1], readout)
    return ld


# -- protocol-only batched sweep --------------------------------------------------------------
def _by_length(backend: Backend, prompts: Sequence[str]) -> tuple[Batch, dict[int, list[int]]]:
    batch = backend.tokenize(list(prompts))
    lengths = batch.attention_mask.sum(1).tolist()
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    return batch, groups


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def patch_sweep(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 128,
    sites: Sequence[tuple[int, int, int]] | None = None,
) -> torch.Tensor:
    """Batched sweep through the backend protocol: up to ``max_rows`` sites per forward.

    Rows are (pair, layer, column) sites of pairs with equal token length (so no padding); one
    hook per layer writes each row's TRUE activation at its position. ``sites`` restricts the
    work to those (pair, layer, column) triples. Same layout as :func:`patch_loop`.
    """
    n_layers = backend.n_layers
    width = _check_source(source, len(false_prompts), n_layers)
    wids = _widths(len(false_prompts), width, widths)
    batch, groups = _by_length(backend, false_prompts)
    wanted = None if sites is None else set(sites)
    ld = torch.full((len(false_prompts), n_layers, width), float("nan"), dtype=torch.float64)
    for length, members in groups.items():
        ids = batch.input_ids[members][:, -length:]
        rows = [
            (k, i, layer, j)
            for k, i in enumerate(members)
            for layer in range(n_layers)
            for j in range(width - wids[i], width)
            if wanted is None or (i, layer, j) in wanted
        ]
        for chunk in _chunks(rows, max_rows):
            sel = torch.tensor([r[0] for r in chunk])
            sub = Batch(ids[sel.to(ids.device)], torch.ones_like(ids[sel.to(ids.device)]))
            hooks: list[Hook] = []
            for layer in range(n_layers):
                mine = [(r, row) for r, row in enumerate(chunk) if row[2] == layer]
                if not mine:
                    continue
                rr = torch.tensor([r for r, _ in mine])
                cols = torch.tensor([length - (width - row[3]) for _, row in mine])
                vals = torch.stack([source[layer][row[1], row[3]] for _, row in mine])
                hooks.append((site_name(layer, "hook_resid_post"), _set_rows(rr, cols, vals)))
            logits = backend.forward(sub, hooks, last_only=True)
            values = _ld(logits[:, -1], readout)
            for r, (_, i, layer, j) in enumerate(chunk):
                ld[i, layer, j] = values[r]
    return ld


# -- fast suffix engine (mechtests.methods.patching_suffix) -------------------------------------
def patch_suffix(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast engine (module docstring): ``(ld [pair, layer, W], ld_false [pair])``; see
    :func:`mechtests.methods.patching_suffix.patch_suffix`."""
    from mechtests.methods.patching_suffix import patch_suffix as run

    return run(backend, false_prompts, source, readout, widths, max_rows)


# -- front door --------------------------------------------------------------------------------
def _verify_sites(n_layers: int, width: int, wids: Sequence[int]) -> list[tuple[int, int, int]]:
    """A few sites of the first pair spread over layers and columns (plus the readout cell)."""
    j0 = width - wids[0]
    cols = sorted({j0, (j0 + width - 1) // 2, width - 1})
    return [(0, layer, j) for layer in range(n_layers) for j in cols]


def patch_heatmaps(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    engine: str = "auto",
    max_rows: int = 128,
    verify: bool = True,
    tolerance: float | None = None,
) -> PatchResult:
    """Patching heatmaps of ``false_prompts`` on ``backend`` with TRUE activations ``source``.

    ``engine="auto"`` uses :func:`patch_suffix` when the backend supports it (first checking a
    few sites against :func:`patch_sweep` to ``tolerance``: 1e-4 relative to the largest
    ``|LD|`` in float32, 5e-2 in 16-bit) and :func:`patch_sweep` otherwise; ``"loop"`` is the
    reference.
    """
    return patch_heatmaps_many(backend, false_prompts, [source], readout, widths, engine,
                               max_rows, verify, tolerance)[0]


def patch_heatmaps_many(
    backend: Backend,
    false_prompts: Sequence[str],
    sources: Sequence[Sequence[torch.Tensor]],
    readout: Readout,
    widths: Sequence[int] | None = None,
    engine: str = "auto",
    max_rows: int = 128,
    verify: bool = True,
    tolerance: float | None = None,
) -> list[PatchResult]:
    """:func:`patch_heatmaps` for several sources into the same FALSE prompts, one result per
    source. The suffix engine runs the FALSE prompts once and patches every source's sites in
    the same batched block calls (cross-model maps: another model's and the null's TRUE
    activations into one target)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    n_layers = backend.n_layers
    width = _check_sources(sources, len(false_prompts), n_layers)
    wids = _widths(len(false_prompts), width, widths)
    note = ""
    if engine in ("auto", "suffix"):
        from mechtests.methods.patching_suffix import patch_suffix_many

        try:
            lds, ld_false = patch_suffix_many(backend, false_prompts, sources, readout, wids,
                                              max_rows)
        except SuffixEngineUnavailable as exc:
            if engine == "suffix":
                raise
            note = str(exc)
        else:
            if verify:
                notes = [_verify(backend, false_prompts, source, readout, wids, ld, tolerance)
                         for source, ld in zip(sources, lds)]
                note = next((n for n in notes if n), "")
            if not note:
                return [PatchResult(ld, ld_false, "suffix") for ld in lds]
            if engine == "suffix":
                raise SuffixEngineUnavailable(note)
    ld_false = clean_logit_diffs(backend, false_prompts, readout, batch_size=max_rows)
    if engine == "loop":
        return [PatchResult(patch_loop(backend, false_prompts, source, readout, wids), ld_false,
                            "loop") for source in sources]
    return [PatchResult(patch_sweep(backend, false_prompts, source, readout, wids, max_rows),
                        ld_false, "sweep", note) for source in sources]


def _verify(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    wids: Sequence[int],
    ld: torch.Tensor,
    tolerance: float | None,
) -> str:
    """'' when the suffix engine matches the sweep on a few sites, else the reason."""
    width = int(ld.shape[2])
    sites = _verify_sites(backend.n_layers, width, wids)
    ref = patch_sweep(backend, false_prompts[:1], [s[:1] for s in source], readout, wids[:1],
                      sites=sites)
    got = torch.stack([ld[0, layer, j] for _, layer, j in sites])
    want = torch.stack([ref[0, layer, j] for _, layer, j in sites])
    scale = max(1.0, float(want.abs().max()))
    tol = tolerance if tolerance is not None else (
        1e-4 if backend.dtype == torch.float32 else 5e-2)
    err = float((got - want).abs().max()) / scale
    if not err <= tol:
        return f"suffix engine disagrees with the sweep by {err:.2e} (relative) > {tol:g}"
    return ""
