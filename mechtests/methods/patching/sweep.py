"""The protocol-only patching engines: the paper's per-site loop and the batched sweep.

Both talk to the model only through :class:`~mechtests.engine.backend.Backend` (a hook at
``blocks.{l}.hook_resid_post`` that writes the TRUE activation into its rows at their
positions), so they work on every backend; each site costs a full forward. Layout in
:mod:`mechtests.methods.patching`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechtests.engine.backend import Backend, Batch, Hook
from mechtests.methods.patching.common import (
    Readout,
    check_source,
    check_widths,
    chunks,
    group_by_length,
    logit_diff,
)
from mechtests.sites import site_name

__all__ = ["patch_loop", "patch_sweep"]


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
    width = check_source(source, len(false_prompts), n_layers)
    wids = check_widths(len(false_prompts), width, widths)
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
                ld[i, layer, j] = logit_diff(logits[0, -1], readout)
    return ld


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
    width = check_source(source, len(false_prompts), n_layers)
    wids = check_widths(len(false_prompts), width, widths)
    batch, groups = group_by_length(backend, false_prompts)
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
        for chunk in chunks(rows, max_rows):
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
            values = logit_diff(logits[:, -1], readout)
            for r, (_, i, layer, j) in enumerate(chunk):
                ld[i, layer, j] = values[r]
    return ld
