"""Refusal interventions as hook lists: directional ablation and activation addition.

Du et al. 2025 (paper code Refusal/apply_refusal_dir.py, ``Refusal/apply_refusal_dir.py``):

* **Directional ablation** removes the unit direction ``r`` from the residual stream at every
  layer, at ``resid_pre``, ``resid_mid`` and ``resid_post``, at every position including the
  generated ones: ``x <- x - (x . r) r``.
* **Activation addition** adds ``c r`` at the three hooks ``resid_pre``, ``resid_mid`` and
  ``resid_post`` of one layer ``L``, at every position, so the residual after block ``L`` carries
  ``+3 c r``. **Subtraction** is the same with ``-c``. The set of hooks is configurable (the
  family's ``refusal.hooks``); Arditi et al. use ``resid_pre`` only with the unnormalised
  difference of means (``normalise=False``, ``c = 1``).

Every builder returns a list of ``(site, fn)`` pairs for ``Backend.forward`` / ``generate`` /
``cache``; the backend installs them for one call and always removes them. Nothing here holds a
model. Deviation from the paper's code: the projection is computed in float32 and cast back to
the activation's dtype (the paper works in bf16 throughout); in float32 runs this is identical.

Example:
    >>> hooks = ablation_hooks(torch.tensor([1.0, 0.0]), n_layers=2)
    >>> [site for site, _ in hooks][:3]
    ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_mid', 'blocks.0.hook_resid_post']
    >>> hooks[0][1](torch.tensor([[[3.0, 4.0]]])).tolist()
    [[[0.0, 4.0]]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechtests.engine.backend import Hook, HookFn
from mechtests.sites import site_name

__all__ = [
    "PAPER_ABLATION_KINDS",
    "ablate",
    "ablation_hooks",
    "addition_hooks",
    "subtraction_hooks",
]

PAPER_ABLATION_KINDS: tuple[str, ...] = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


def _on(
    vector: torch.Tensor, like: torch.Tensor, cache: dict[str, torch.Tensor]
) -> torch.Tensor:
    key = str(like.device)
    if key not in cache:
        cache[key] = vector.to(device=like.device, dtype=torch.float32)
    return cache[key]


def ablate(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``x - (x . r) r`` for a unit ``r``, computed in float32, returned in ``x``'s dtype."""
    return _project_out(x, direction.to(device=x.device, dtype=torch.float32))


def _project_out(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf - (xf @ r).unsqueeze(-1) * r).to(x.dtype)


def _ablation_fn(direction: torch.Tensor) -> HookFn:
    cache: dict[str, torch.Tensor] = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        return _project_out(x, _on(direction, x, cache))

    return fn


def _addition_fn(vector: torch.Tensor) -> HookFn:
    cache: dict[str, torch.Tensor] = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        return (x.float() + _on(vector, x, cache)).to(x.dtype)

    return fn


def _unit(direction: torch.Tensor) -> torch.Tensor:
    d = direction.detach().reshape(-1).to(torch.float64)
    norm = d.norm()
    if float(norm) == 0.0:
        raise ValueError("intervention direction is the zero vector")
    # the paper re-normalises with +1e-8 (apply_refusal_dir.py)
    return (d / (norm + 1e-8)).to(torch.float32)


def ablation_hooks(
    direction: torch.Tensor, n_layers: int, kinds: Sequence[str] = PAPER_ABLATION_KINDS
) -> list[Hook]:
    """Project ``direction`` out at ``kinds`` of every layer ``0..n_layers-1`` (all positions)."""
    fn = _ablation_fn(_unit(direction))
    return [(site_name(layer, kind), fn) for layer in range(n_layers) for kind in kinds]


def addition_hooks(
    direction: torch.Tensor,
    layer: int,
    coef: float,
    kinds: Sequence[str],
    normalise: bool = True,
) -> list[Hook]:
    """Add ``coef * r`` at each of ``kinds`` of ``layer`` (all positions).

    ``r`` is the unit ``direction`` (paper) or, with ``normalise=False``, ``direction`` as given
    (Arditi et al.'s unnormalised difference of means).
    """
    if not kinds:
        raise ValueError("addition_hooks needs at least one hook kind (e.g. 'hook_resid_pre')")
    base = _unit(direction) if normalise else direction.detach().reshape(-1).to(torch.float32)
    fn = _addition_fn(base * float(coef))
    return [(site_name(layer, kind), fn) for kind in kinds]


def subtraction_hooks(
    direction: torch.Tensor, layer: int, coef: float, kinds: Sequence[str]
) -> list[Hook]:
    """Subtract ``coef * r`` (unit ``r``) at each of ``kinds`` of ``layer``."""
    return addition_hooks(direction, layer, -float(coef), kinds)
