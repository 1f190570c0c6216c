"""Truth directions: difference of class means, and cosines between models and layers.

Du et al. 2025 (paper code Knowledge+Truthfulness/probes.py:MMProbe, code ``probes.py:MMProbe``)
define the truthfulness direction of
a model at a layer as ``d = mean(x | true) - mean(x | false)`` over the concatenated, per-dataset
centered activations of the training statements (unnormalised). Two models share the direction
when ``cos(d_base, d_post)`` is high (claim T1); the steering vector of paper code
Knowledge+Truthfulness/interventions.py is
``v = ((mu_T - mu_F) . d_hat) d_hat``, which for the mass-mean direction is ``mu_T - mu_F``.

All means and dot products are float64 (activations arrive in float32 or bf16).

Example:
    >>> acts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    >>> diff_of_means(acts, torch.tensor([1, 1, 0]))
    tensor([ 2., -1.], dtype=torch.float64)
    >>> round(cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])), 4)
    0.7071
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mechtests.methods.stats import bootstrap_interval

__all__ = [
    "cosine",
    "cosine_by_layer",
    "cosine_interval",
    "cosine_matrix",
    "diff_of_means",
    "directions_by_layer",
    "steering_vector",
]


def _labels_bool(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    lab = torch.as_tensor(labels)
    return lab.reshape(-1) > 0.5


def diff_of_means(acts: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``mean(acts | label = 1) - mean(acts | label = 0)`` in float64, shape ``[d]``.

    ``acts`` is ``[n, d]``; ``labels`` are 0/1. Raises ``ValueError`` when a class is empty and
    checks the result for NaN (refusal_direction's habit).
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n, d], got shape {tuple(acts.shape)}")
    pos = _labels_bool(labels).to(acts.device)
    if pos.shape[0] != acts.shape[0]:
        raise ValueError(f"{acts.shape[0]} activations but {pos.shape[0]} labels")
    if not bool(pos.any()) or bool(pos.all()):
        raise ValueError("diff_of_means needs both true (1) and false (0) examples")
    x = acts.to(torch.float64)
    d = x[pos].mean(0) - x[~pos].mean(0)
    if bool(torch.isnan(d).any()):
        raise ValueError("difference of means contains NaN (NaN activations?)")
    return d


def steering_vector(
    acts: torch.Tensor, labels: torch.Tensor | Sequence[int], direction: torch.Tensor | None = None
) -> torch.Tensor:
    """The truth steering vector (docs/claims.md T4-T5):
    ``v = ((mu_T - mu_F) . d_hat) d_hat`` (float64, ``[d]``).

    ``direction`` defaults to the mass-mean direction itself, for which ``v = mu_T - mu_F``
    (norm = the raw difference-of-means norm; the paper's coefficient ``c = 1``).
    """
    mean_diff = diff_of_means(acts, labels)
    if direction is None:
        return mean_diff
    d_hat = direction.to(torch.float64)
    d_hat = d_hat / d_hat.norm()
    return (mean_diff @ d_hat) * d_hat


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors in float64 (``nan`` if either is zero)."""
    x, y = a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)
    denom = x.norm() * y.norm()
    if float(denom) == 0.0:
        return float("nan")
    return float((x @ y) / denom)


def directions_by_layer(
    acts_by_layer: Mapping[int, torch.Tensor], labels: torch.Tensor | Sequence[int]
) -> dict[int, torch.Tensor]:
    """The difference-of-means direction at every layer of ``acts_by_layer`` (``[n, d]`` each)."""
    return {layer: diff_of_means(acts, labels) for layer, acts in sorted(acts_by_layer.items())}


def cosine_by_layer(
    first: Mapping[int, torch.Tensor], second: Mapping[int, torch.Tensor]
) -> dict[int, float]:
    """``cos(first[l], second[l])`` for every layer present in both."""
    shared = sorted(set(first) & set(second))
    return {layer: cosine(first[layer], second[layer]) for layer in shared}


def cosine_matrix(directions: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    """Pairwise cosines of named directions: ``(names, [k, k] float64 matrix)``."""
    names = list(directions)
    if not names:
        return names, torch.zeros(0, 0, dtype=torch.float64)
    stacked = torch.stack([directions[k].reshape(-1).to(torch.float64) for k in names])
    unit = stacked / stacked.norm(dim=1, keepdim=True)
    return names, unit @ unit.T


def cosine_interval(
    acts_a: torch.Tensor,
    acts_b: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "basic",
) -> tuple[float, float]:
    """Bootstrap interval of ``cos(diff_of_means(acts_a), diff_of_means(acts_b))``.

    ``acts_a`` and ``acts_b`` are two models' activations on the same statements (rows paired);
    each resample draws statements with replacement and recomputes both directions from the
    same draw (as weighted means, float64). The default ``basic`` interval removes the upward
    bias that the statements' shared sampling noise gives the cosine (percentile bounds can
    lie above the point estimate); bounds are clipped to [-1, 1].
    """
    x = acts_a.to(torch.float64).cpu().numpy()
    y = acts_b.to(torch.float64).cpu().numpy()
    pos = _labels_bool(labels).cpu().numpy()
    n = x.shape[0]

    def stat(idx: np.ndarray) -> float:
        counts = np.bincount(idx, minlength=n).astype(np.float64)
        w_t, w_f = counts * pos, counts * ~pos
        if w_t.sum() == 0 or w_f.sum() == 0:
            return float("nan")
        w = w_t / w_t.sum() - w_f / w_f.sum()
        da, db = w @ x, w @ y
        denom = float(np.linalg.norm(da) * np.linalg.norm(db))
        return float(da @ db) / denom if denom > 0 else float("nan")

    lo, hi = bootstrap_interval(stat, n=n, n_boot=n_boot, seed=seed, level=level, method=method)
    return (max(-1.0, lo), min(1.0, hi))
