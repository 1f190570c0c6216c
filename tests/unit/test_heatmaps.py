"""Heatmap aggregation, the paper's normalize() and the comparison metrics (paper code
Knowledge+Truthfulness/patching_visualize.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from mechtests.methods.heatmaps import (
    group_columns,
    hot_cells,
    interior_mask,
    jaccard,
    knowledge_recovery,
    max_abs_diff,
    mean_heatmap,
    normalize,
    peak_layer,
    pearson_r,
    recovered_fraction,
    reverse_layers,
    shuffle_layers,
)


def test_normalize_zeroes_the_lower_half_and_bins_the_upper_half_in_tenths() -> None:
    a = np.array([[-6.89, -6.9, -6.95], [0.0, 2.0, 5.15]])
    n = normalize(a)
    # range [-6.95, 5.15], bins 0.605 wide: the midpoint is -0.9; 0.0 is 1.5 bins above it
    # (bin 12 -> 0.2), 2.0 is 4.8 bins above (bin 15 -> 0.5), 5.15 is in bin 20 (1.0)
    assert n[0].tolist() == [0.0, 0.0, 0.0]
    assert n[1, 2] == 1.0
    assert n[1, 0] == pytest.approx(0.2)
    assert n[1, 1] == pytest.approx(0.5)
    assert set(np.round(normalize(np.linspace(0, 1, 101)) * 10, 6)) == set(
        [0.0, *range(1, 11)])


def test_normalize_matches_the_papers_code_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(size=(6, 9)) * rng.uniform(0.1, 10)
        values = a.flatten()
        bins = np.linspace(values.min() - 1e-5, values.max() + 1e-5, 21)
        expected = np.concatenate((np.zeros(10), np.linspace(0.1, 1.0, 10)))[
            np.digitize(values, bins) - 1].reshape(a.shape)
        np.testing.assert_array_equal(normalize(a), expected)


def test_normalize_keeps_nan_cells_out_of_the_range() -> None:
    n = normalize(np.array([[np.nan, 0.0, 1.0]]))
    assert np.isnan(n[0, 0])
    assert n[0, 2] == 1.0
    assert n[0, 1] == 0.0


def test_mean_heatmap_averages_only_the_cells_a_pair_patched() -> None:
    ld = np.array([[[np.nan, 1.0]], [[2.0, 3.0]]])
    np.testing.assert_allclose(mean_heatmap(ld), [[2.0, 2.0]])
    with pytest.raises(ValueError):
        mean_heatmap(np.zeros((0, 2, 2)))


def test_recovered_fraction_is_zero_at_the_false_run_and_one_at_the_true_run() -> None:
    r = recovered_fraction(np.array([[-2.0, 3.0, 0.5]]), ld_true=3.0, ld_false=-2.0)
    np.testing.assert_allclose(r, [[0.0, 1.0, 0.5]])
    assert np.isnan(recovered_fraction(np.ones((1, 2)), 1.0, 1.0)).all()
    assert knowledge_recovery(np.array([[0.1, 0.9, 0.4]]), [0, 2]) == pytest.approx(0.4)


def test_pearson_r_is_scipys_and_nan_for_constant_maps() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    assert pearson_r(a, b) == pytest.approx(pearsonr(a.flatten(), b.flatten())[0])
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:, 2:] = True
    assert pearson_r(a, b, mask) == pytest.approx(pearsonr(a[mask], b[mask])[0])
    assert np.isnan(pearson_r(np.ones((2, 2)), b[:2, :2]))
    with pytest.raises(ValueError):
        pearson_r(a, b[:, :2])


def test_max_abs_diff_over_all_or_some_columns() -> None:
    a = np.array([[0.0, 0.5, 1.0]])
    b = np.array([[0.0, 0.2, 0.0]])
    assert max_abs_diff(a, b) == 1.0
    assert max_abs_diff(a, b, [0, 1]) == pytest.approx(0.3)


def test_hot_cells_and_jaccard() -> None:
    a = hot_cells(np.array([[0.5, 0.4], [0.9, 0.0]]))
    b = hot_cells(np.array([[0.6, 0.5], [0.0, 0.0]]))
    assert a.tolist() == [[True, False], [True, False]]
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, b, np.array([[True, True], [False, False]])) == pytest.approx(0.5)
    assert jaccard(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_peak_layer_and_the_layer_nulls() -> None:
    a = np.array([[0.0, 1.0], [3.0, 0.0], [2.0, 5.0]])
    assert peak_layer(a, 0) == 1
    assert peak_layer(a, 1) == 2
    np.testing.assert_array_equal(reverse_layers(a), a[::-1])
    shuffled = shuffle_layers(a, seed=3)
    np.testing.assert_array_equal(shuffled, shuffle_layers(a, seed=3))
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, a))


def test_interior_mask_drops_identical_prefix_columns_and_the_last_layer() -> None:
    m = interior_mask((3, 4), first_column=1)
    assert m.tolist() == [[False, True, True, True]] * 2 + [[False] * 4]
    assert interior_mask((3, 4), 1, drop_last_layer=False)[-1].tolist() == [False, True, True, True]


def test_group_columns_averages_knowledge_others_and_keeps_the_last_token() -> None:
    ld = np.array([[np.nan, 1.0, 2.0, 4.0, 6.0], [np.nan, 0.0, 0.0, 8.0, 1.0]])
    grouped = group_columns(ld, knowledge=[1])  # window columns 0..3 -> 1.0, 2.0, 4.0, 6.0
    np.testing.assert_allclose(grouped, [[2.0, 2.5, 6.0], [0.0, 4.0, 1.0]])
    with pytest.raises(ValueError):
        group_columns(ld, knowledge=[])
