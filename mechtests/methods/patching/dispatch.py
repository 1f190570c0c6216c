"""The front door: :func:`patch_heatmaps` picks the engine, checks the fast one, falls back.

``engine="auto"`` asks the backend for the suffix engine (:mod:`mechtests.engine.suffix`),
checks its numbers on a few sites against the protocol-only sweep, and uses the sweep when the
backend does not offer the engine or the check fails (the reason goes into
:attr:`~mechtests.methods.patching.common.PatchResult.note`). ``"suffix"`` insists on the
fast engine, ``"sweep"`` and ``"loop"`` skip it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechtests.engine.backend import Backend
from mechtests.engine.suffix import SuffixEngineUnavailable
from mechtests.methods.patching.common import (
    PatchResult,
    Readout,
    check_sources,
    check_widths,
    clean_logit_diffs,
)
from mechtests.methods.patching.suffix import patch_suffix_many
from mechtests.methods.patching.sweep import patch_loop, patch_sweep
from mechtests.phases import PATCHING, PATCHING_PHASES, PhaseCall, timed_phase

__all__ = ["ENGINES", "patch_heatmaps", "patch_heatmaps_many"]

ENGINES = ("auto", "suffix", "sweep", "loop")


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


def _patched_sites(_call: PhaseCall, results: list[PatchResult]) -> int:
    """Sites a patching call measured (NaN cells of an incomplete map not counted)."""
    return sum(int((~torch.isnan(result.ld)).sum()) for result in results)


@timed_phase(PATCHING, items=_patched_sites, inside=PATCHING_PHASES)
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
    activations into one target); its check against the sweep reads the first source's map."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    n_layers = backend.n_layers
    width = check_sources(sources, len(false_prompts), n_layers)
    wids = check_widths(len(false_prompts), width, widths)
    note = ""
    if engine in ("auto", "suffix"):
        try:
            lds, ld_false = patch_suffix_many(backend, false_prompts, sources, readout, wids,
                                              max_rows)
        except SuffixEngineUnavailable as exc:
            if engine == "suffix":
                raise
            note = str(exc)
        else:
            if verify:  # one check per call: every source runs the same engine code path
                note = _verify(backend, false_prompts, sources[0], readout, wids, lds[0],
                               tolerance)
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
