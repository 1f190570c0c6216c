"""Statistics shared by every area: bootstrap intervals and random-direction nulls.

Two small, stable entry points that other areas import:

* :func:`bootstrap_interval` - a percentile bootstrap interval of a statistic over examples
  (statements, prompts, pairs). Pass the per-example values to bootstrap their mean, or a
  function of resampled indices for any other statistic (a ratio of means, an accuracy gap).
  Several strata (e.g. true and false statements) are resampled separately.
* :func:`random_unit_directions` - seeded Gaussian directions on the unit sphere, the null of
  every "this direction is special" claim.

The analytic null for a cosine between two independent uniformly random directions in ``d``
dimensions is :func:`random_cosine_quantile`: ``(1 + cos) / 2 ~ Beta((d-1)/2, (d-1)/2)``, so
``|cos|`` concentrates at about ``1/sqrt(d)`` (0.016 for ``d = 4096``, docs/claims.md T1).

Example:
    >>> lo, hi = bootstrap_interval([1.0, 0.0, 1.0, 1.0], n_boot=200)
    >>> 0.0 <= lo <= 0.75 <= hi <= 1.0
    True
    >>> random_unit_directions(3, 8).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mechtests.phases import timed_phase

__all__ = [
    "bootstrap_interval",
    "expected_abs_cosine",
    "random_cosine_quantile",
    "random_unit_directions",
]

IndexFn = Callable[..., float]
Values = Sequence[float] | np.ndarray | torch.Tensor


def _as_array(values: Values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).cpu().numpy().reshape(-1)
    return np.asarray(values, dtype=np.float64).reshape(-1)


@timed_phase("bootstrap", items=lambda call, _interval: int(call.arg("n_boot")))
def bootstrap_interval(
    values_or_fn: Values | IndexFn,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n: int | Sequence[int] | None = None,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap interval at ``level`` (two-sided).

    ``values_or_fn`` is either the per-example values (the statistic is their mean) or a
    function of resampled indices. With a function, ``n`` gives the number of examples; an int
    means one stratum (``fn(idx)``), a sequence of ints means one independently resampled
    stratum each (``fn(idx_0, idx_1, ...)``). Resamples whose statistic is not finite are
    dropped; if none is finite the interval is ``(nan, nan)``. Deterministic for a ``seed``.

    ``method="percentile"`` gives the quantiles of the resampled statistic; ``"basic"`` reflects
    them around the point estimate ``t`` (``(2t - q_hi, 2t - q_lo)``), which removes the
    bootstrap's estimate of the statistic's bias. Use ``"basic"`` for statistics that are
    biased by sampling noise, such as the cosine of two mean-difference directions estimated on
    the same examples (the shared noise inflates it, so percentile bounds can sit above ``t``).

    Example:
        >>> acc = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=float)
        >>> lo, hi = bootstrap_interval(acc, n_boot=500, seed=1)
        >>> bool(lo < acc.mean() < hi)
        True
        >>> t, f = np.ones(5), np.zeros(7)
        >>> bootstrap_interval(lambda i, j: t[i].mean() - f[j].mean(), n=(5, 7), n_boot=50)
        (1.0, 1.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if method not in ("percentile", "basic"):
        raise ValueError(f"method must be 'percentile' or 'basic', got {method!r}")
    rng = np.random.default_rng(seed)
    if callable(values_or_fn):
        if n is None:
            raise ValueError("bootstrap_interval(fn, ...) needs n (examples per stratum)")
        fn = values_or_fn
        sizes = [int(n)] if isinstance(n, (int, np.integer)) else [int(k) for k in n]
    else:
        arr = _as_array(values_or_fn)
        sizes = [arr.size]

        def fn(idx: np.ndarray) -> float:
            return float(arr[idx].mean())

    if any(k <= 0 for k in sizes):
        return (math.nan, math.nan)
    stats = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        draws = [rng.integers(0, k, size=k) for k in sizes]
        stats[b] = float(fn(*draws))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    if method == "basic":
        point = float(fn(*[np.arange(k) for k in sizes]))
        lo, hi = 2.0 * point - hi, 2.0 * point - lo
    return (float(lo), float(hi))


def random_unit_directions(
    n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``n`` directions drawn uniformly from the unit sphere in ``d`` dimensions, ``[n, d]``.

    Gaussian draws normalised to unit norm, from a private seeded generator (the global RNG is
    untouched). Scale a row by ``|v|`` for a random control "with the norm of v".
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def random_cosine_quantile(d: int, level: float = 0.95) -> float:
    """The ``level`` quantile of ``|cos|`` between two independent random directions in ``d``-D.

    Exact: ``(1 + cos) / 2 ~ Beta((d-1)/2, (d-1)/2)``. For ``d = 4096``, ``level = 0.95``: 0.031.
    """
    from scipy.stats import beta

    if d < 2:
        return 1.0
    a = (d - 1) / 2.0
    return float(2.0 * beta.ppf((1.0 + level) / 2.0, a, a) - 1.0)


def expected_abs_cosine(d: int) -> float:
    """``E|cos|`` between two independent random directions in ``d`` dimensions.

    ``Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))``, about ``sqrt(2 / (pi d))`` for large ``d``.
    """
    if d < 2:
        return 1.0
    return float(math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi))
