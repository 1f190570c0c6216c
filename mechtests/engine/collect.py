"""Batched activation collection: many prompts, a few sites, a few positions.

``collect_activations`` tokenizes prompts in batches (left padding), runs each batch through
:meth:`Backend.cache` (which stops the forward after the last needed layer) and concatenates the
results. It is the one place activations are gathered for the store
(:meth:`mechtests.measures.context.FamilyContext.activations`), in the manner of
``refusal_direction``'s ``get_mean_activations`` and geometry-of-truth's ``generate_acts.py``,
but keeping every row.

Example:
    >>> acts = collect_activations(backend, ["a b", "c d e"], ["blocks.1.hook_resid_post"], [-1])
    >>> acts["blocks.1.hook_resid_post"].shape                         # doctest: +SKIP
    torch.Size([2, 1, 64])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch

from mechtests.engine.backend import Backend
from mechtests.phases import timed_phase


def progress_enabled(progress: bool) -> bool:
    """Whether to draw a bar: asked for, on a terminal, and not under CI or an xdist worker."""
    if not progress or os.environ.get("CI") or os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    return sys.stderr.isatty()


@timed_phase("activation collection", items=lambda call, _acts: len(call.arg("prompts")))
def collect_activations(
    backend: Backend,
    prompts: Sequence[str],
    sites: Sequence[str],
    positions: Sequence[int],
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "",
) -> dict[str, torch.Tensor]:
    """Activations ``{site: float32 CPU tensor [len(prompts), len(positions), d]}``.

    ``positions`` index the left-padded token axis; negative values count from the end, so
    ``-1`` is the last real token of every prompt.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    bar = tqdm(
        total=len(prompts),
        desc=desc or "activations",
        unit="prompt",
        disable=not progress_enabled(progress),
        leave=False,
    )
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            acts = backend.cache(backend.tokenize(chunk), sites, positions)
            for site in sites:
                parts[site].append(acts[site])
            bar.update(len(chunk))
    finally:
        bar.close()
    if not prompts:
        return {site: torch.zeros(0, len(positions), _width(backend, site)) for site in sites}
    return {site: torch.cat(parts[site], dim=0) for site in sites}


def _width(backend: Backend, site: str) -> int:
    if site.endswith("mlp.hook_post"):
        return int(backend.readout_weights().mlp_out.shape[1])
    return backend.d_model
