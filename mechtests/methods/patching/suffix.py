"""The fast engine through the backend's suffix patcher (:mod:`mechtests.engine.suffix`).

The backend's model runs behind :class:`~mechtests.engine.suffix.SuffixPatcher`; this module
checks the sources and windows, groups the FALSE prompts by token length, cuts each group into
chunks of at most ``max_rows`` pairs (one FALSE pass each) and assembles the heatmaps in the
layout of :mod:`mechtests.methods.patching`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechtests.engine.backend import Backend
from mechtests.engine.suffix import OffersSuffixPatcher, SuffixEngineUnavailable, SuffixPatcher
from mechtests.methods.patching.common import (
    Readout,
    check_sources,
    check_widths,
    chunks,
    group_by_length,
)

__all__ = ["patch_suffix", "patch_suffix_many", "suffix_patcher_of"]


def suffix_patcher_of(backend: Backend) -> SuffixPatcher:
    """The backend's suffix patcher, or :class:`SuffixEngineUnavailable` saying why there is
    none."""
    if not isinstance(backend, OffersSuffixPatcher):
        raise SuffixEngineUnavailable(
            f"the suffix engine needs a backend that offers it (suffix_patcher()); got "
            f"{type(backend).__name__}"
        )
    return backend.suffix_patcher()


def patch_suffix(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast engine for one source: ``(ld [pair, layer, W], ld_false [pair])``."""
    lds, ld_false = patch_suffix_many(backend, false_prompts, [source], readout, widths,
                                      max_rows)
    return lds[0], ld_false


def patch_suffix_many(
    backend: Backend,
    false_prompts: Sequence[str],
    sources: Sequence[Sequence[torch.Tensor]],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The fast engine for several sources patched into the same FALSE runs:
    ``([ld [pair, layer, W] per source], ld_false [pair])``. ``max_rows`` caps the pairs per
    FALSE pass. Raises :class:`SuffixEngineUnavailable` for backends without the engine.
    """
    patcher = suffix_patcher_of(backend)
    n_layers = backend.n_layers
    width = check_sources(sources, len(false_prompts), n_layers)
    wids = check_widths(len(false_prompts), width, widths)
    batch, groups = group_by_length(backend, false_prompts)
    lds = [torch.full((len(false_prompts), n_layers, width), float("nan"), dtype=torch.float64)
           for _ in sources]
    ld_false = torch.full((len(false_prompts),), float("nan"), dtype=torch.float64)
    for length, members in groups.items():
        for chunk in chunks(members, max_rows):
            rows = torch.tensor(list(chunk))
            ids = batch.input_ids[list(chunk)][:, -length:]
            got, clean = patcher.patch(ids, sources, rows, [wids[i] for i in chunk], readout)
            ld_false[rows] = clean
            for ld, part in zip(lds, got):
                ld[rows] = part
    return lds, ld_false
