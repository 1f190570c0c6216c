"""Bootstrap intervals and random-direction nulls (mechtests.methods.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechtests.methods.stats import (
    bootstrap_interval,
    expected_abs_cosine,
    random_cosine_quantile,
    random_unit_directions,
)


def test_bootstrap_interval_of_values_brackets_their_mean() -> None:
    values = np.random.default_rng(0).normal(0.3, 1.0, size=400)
    lo, hi = bootstrap_interval(values, n_boot=500)
    assert lo < values.mean() < hi
    # the normal-theory half-width is 1.96 * sd / sqrt(n) = 0.098
    assert 0.07 < (hi - lo) / 2 < 0.13


def test_bootstrap_interval_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    values = np.arange(50, dtype=float)
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_bootstrap_interval_accepts_torch_tensors() -> None:
    lo, hi = bootstrap_interval(torch.ones(10), n_boot=20)
    assert (lo, hi) == (1.0, 1.0)


def test_bootstrap_interval_narrows_with_more_examples() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap_interval(rng.integers(0, 2, 50).astype(float), n_boot=400)
    large = bootstrap_interval(rng.integers(0, 2, 5000).astype(float), n_boot=400)
    assert large[1] - large[0] < (small[1] - small[0]) / 3


def test_bootstrap_interval_resamples_each_stratum_separately() -> None:
    t, f = np.ones(30), np.zeros(10)
    seen: list[tuple[int, int]] = []

    def stat(i: np.ndarray, j: np.ndarray) -> float:
        seen.append((len(i), len(j)))
        return float(t[i].mean() - f[j].mean())

    assert bootstrap_interval(stat, n=(30, 10), n_boot=25) == (1.0, 1.0)
    assert set(seen) == {(30, 10)}


def test_bootstrap_interval_of_a_function_needs_n() -> None:
    with pytest.raises(ValueError, match="needs n"):
        bootstrap_interval(lambda i: 0.0)


def test_bootstrap_interval_drops_non_finite_resamples_and_reports_nan_when_all_are() -> None:
    assert all(math.isnan(x) for x in bootstrap_interval(lambda i: float("nan"), n=5, n_boot=10))
    assert all(math.isnan(x) for x in bootstrap_interval([], n_boot=10))


def test_bootstrap_interval_rejects_a_level_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval([1.0, 2.0], level=1.5)


def test_random_unit_directions_have_unit_norm_and_are_seeded() -> None:
    a = random_unit_directions(5, 32, seed=7)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(a, random_unit_directions(5, 32, seed=7))
    assert not torch.equal(a, random_unit_directions(5, 32, seed=8))


def test_random_unit_directions_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    random_unit_directions(4, 16, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("d", [16, 128])
def test_analytic_cosine_null_matches_monte_carlo(d: int) -> None:
    x = random_unit_directions(20000, d, seed=0)
    y = random_unit_directions(20000, d, seed=1)
    cos = (x * y).sum(1).abs().numpy()
    assert abs(np.quantile(cos, 0.95) - random_cosine_quantile(d, 0.95)) < 0.01
    assert abs(cos.mean() - expected_abs_cosine(d)) < 0.005


def test_cosine_null_in_4096_dimensions_is_small() -> None:
    # docs/claims.md T1: random 4096-d pairs give |cos| about 0.016
    assert 0.012 < expected_abs_cosine(4096) < 0.02
    assert 0.025 < random_cosine_quantile(4096) < 0.035


def test_basic_bootstrap_reflects_percentiles_around_the_point_estimate() -> None:
    values = np.random.default_rng(2).exponential(size=300)
    lo_p, hi_p = bootstrap_interval(values, n_boot=400, seed=5)
    lo_b, hi_b = bootstrap_interval(values, n_boot=400, seed=5, method="basic")
    mean = values.mean()
    assert lo_b == pytest.approx(2 * mean - hi_p)
    assert hi_b == pytest.approx(2 * mean - lo_p)


def test_basic_bootstrap_corrects_a_statistic_biased_upward_by_resampling() -> None:
    # the squared mean of zero-mean noise: resampling adds variance, so percentile bounds sit
    # above the point estimate; the basic interval moves back below it
    values = np.random.default_rng(3).normal(size=200)
    t = values.mean() ** 2

    def sq(idx: np.ndarray) -> float:
        return float(values[idx].mean() ** 2)

    lo_b, _ = bootstrap_interval(sq, n=200, n_boot=400, method="basic")
    _, hi_p = bootstrap_interval(sq, n=200, n_boot=400)
    assert lo_b < t < hi_p


def test_bootstrap_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval([1.0], method="bca")
