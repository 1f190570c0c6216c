"""Truth directions and per-dataset centering (paper code
Knowledge+Truthfulness/generate_acts.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mechtests.data.statements import center_per_dataset
from mechtests.methods.directions import (
    cosine,
    cosine_by_layer,
    cosine_interval,
    cosine_matrix,
    diff_of_means,
    directions_by_layer,
    steering_vector,
)


def test_diff_of_means_is_true_mean_minus_false_mean_in_float64() -> None:
    acts = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]], dtype=torch.float32)
    d = diff_of_means(acts, [1, 1, 0])
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, torch.tensor([-8.0, 3.0], dtype=torch.float64))


def test_diff_of_means_accumulates_in_float64() -> None:
    # float32 accumulation of 1e8 + small values loses the small part; float64 keeps it
    acts = torch.full((1000, 1), 1e8, dtype=torch.float32)
    acts[:500] += 8.0
    assert diff_of_means(acts, [1] * 500 + [0] * 500).item() == pytest.approx(8.0)


def test_diff_of_means_needs_both_classes_and_matching_labels() -> None:
    with pytest.raises(ValueError, match="both"):
        diff_of_means(torch.ones(3, 2), [1, 1, 1])
    with pytest.raises(ValueError, match="labels"):
        diff_of_means(torch.ones(3, 2), [1, 0])
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        diff_of_means(torch.ones(3), [1, 0, 1])


def test_steering_vector_of_the_mass_mean_direction_is_the_mean_difference() -> None:
    gen = torch.Generator().manual_seed(0)
    acts, labels = torch.randn(40, 8, generator=gen), torch.tensor([1, 0] * 20)
    mean_diff = diff_of_means(acts, labels)
    torch.testing.assert_close(steering_vector(acts, labels), mean_diff)
    torch.testing.assert_close(steering_vector(acts, labels, mean_diff * 3.0), mean_diff)


def test_steering_vector_projects_onto_another_direction() -> None:
    acts = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    v = steering_vector(acts, [1, 0], torch.tensor([0.0, 5.0]))
    torch.testing.assert_close(v, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_cosine_is_scale_invariant_and_nan_for_a_zero_vector() -> None:
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-2.0, 0.5, 1.0])
    assert cosine(a, b) == pytest.approx(cosine(10 * a, 0.1 * b))
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert math.isnan(cosine(a, torch.zeros(3)))


def test_cosine_matrix_is_symmetric_with_unit_diagonal() -> None:
    gen = torch.Generator().manual_seed(1)
    dirs = {k: torch.randn(16, generator=gen) for k in ("base", "sft", "instruct")}
    names, mat = cosine_matrix(dirs)
    assert names == ["base", "sft", "instruct"]
    torch.testing.assert_close(mat, mat.T)
    torch.testing.assert_close(mat.diagonal(), torch.ones(3, dtype=torch.float64))
    assert mat[0, 1].item() == pytest.approx(cosine(dirs["base"], dirs["sft"]))


def test_directions_and_cosines_by_layer_follow_the_layers() -> None:
    gen = torch.Generator().manual_seed(2)
    labels = torch.tensor([1, 0] * 10)
    first = directions_by_layer({1: torch.randn(20, 4, generator=gen),
                                 0: torch.randn(20, 4, generator=gen)}, labels)
    assert list(first) == [0, 1]
    second = {0: first[0] * 2.0, 2: first[1]}
    assert cosine_by_layer(first, second) == {0: pytest.approx(1.0)}


def test_center_per_dataset_gives_each_block_zero_mean_and_keeps_dtype() -> None:
    gen = torch.Generator().manual_seed(3)
    blocks = [torch.randn(7, 5, generator=gen) + 4.0, torch.randn(3, 5, generator=gen) - 9.0]
    centered = center_per_dataset(blocks)
    for before, after in zip(blocks, centered):
        assert after.dtype == before.dtype
        torch.testing.assert_close(after.to(torch.float64).mean(0), torch.zeros(5,
                                   dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(after, before - before.mean(0), atol=1e-5, rtol=0)


def test_centering_removes_a_dataset_offset_that_would_otherwise_bias_the_direction() -> None:
    # dataset A is all-true and shifted, dataset B balanced: without centering the shift leaks in
    gen = torch.Generator().manual_seed(4)
    truth = torch.tensor([1.0, 0.0])
    a = torch.randn(50, 2, generator=gen) * 0.1 + torch.tensor([0.0, 5.0])
    b_lab = torch.tensor([1, 0] * 25)
    b = torch.randn(50, 2, generator=gen) * 0.1 + b_lab[:, None] * truth
    a_lab = torch.tensor([1, 0] * 25)
    a = a + a_lab[:, None] * truth
    raw = diff_of_means(torch.cat([a, b]), torch.cat([a_lab, b_lab]))
    cen = diff_of_means(torch.cat(center_per_dataset([a, b])), torch.cat([a_lab, b_lab]))
    assert cosine(cen, truth) > 0.99
    assert cosine(raw, truth) > 0.99  # balanced labels: both fine here
    skew = torch.tensor([1] * 40 + [0] * 10)
    a2 = a - a_lab[:, None] * truth + skew[:, None] * truth
    raw2 = diff_of_means(torch.cat([a2, b]), torch.cat([skew, b_lab]))
    cen2 = diff_of_means(torch.cat(center_per_dataset([a2, b])), torch.cat([skew, b_lab]))
    assert cosine(cen2, truth) > cosine(raw2, truth)


def test_cosine_interval_of_a_direction_with_itself_is_one() -> None:
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor([1, 0] * 100)
    a = torch.randn(200, 32, generator=gen) + 2.0 * labels[:, None] * torch.eye(32)[0]
    assert cosine_interval(a, a, labels, n_boot=50) == (pytest.approx(1.0), pytest.approx(1.0))
    lo, hi = cosine_interval(a, a + 0.5 * torch.randn(200, 32, generator=gen), labels, n_boot=200)
    assert 0.8 < lo <= hi <= 1.0


def test_cosine_interval_corrects_the_bias_of_noise_shared_by_both_models() -> None:
    # population cosine 0.5; both models see the same per-statement noise, which pulls the
    # sample cosine towards 1 and a percentile bootstrap further still. The basic interval
    # reflects the bootstrap's bias back: it sits below the point, nearer the true 0.5.
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 0] * 200)
    u, w = torch.eye(64)[0], 0.5 * torch.eye(64)[0] + 0.75**0.5 * torch.eye(64)[1]
    shared = torch.randn(400, 64, generator=gen)
    a = shared + 0.6 * labels[:, None] * u
    b = shared + 0.6 * labels[:, None] * w + 0.3 * torch.randn(400, 64, generator=gen)
    point = cosine(diff_of_means(a, labels), diff_of_means(b, labels))
    lo_p, hi_p = cosine_interval(a, b, labels, n_boot=300, method="percentile")
    lo_b, hi_b = cosine_interval(a, b, labels, n_boot=300)
    assert point > 0.7  # the bias
    assert (lo_b + hi_b) / 2 < point < (lo_p + hi_p) / 2
    assert lo_b < point
