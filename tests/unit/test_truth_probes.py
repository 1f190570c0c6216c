"""Truth probes behind one interface (paper code Knowledge+Truthfulness/probes.py:MMProbe) on
synthetic activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mechtests.methods.directions import cosine
from mechtests.methods.probes import (
    PROBE_KINDS,
    ProjectionLRProbe,
    accuracy,
    correct,
    fit_logistic_1d,
    make_probe,
    transfer_matrix,
)


def planted(n: int, d: int, seed: int, signal: float = 3.0, cov_scale: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian activations with a planted truth direction (first axis)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([1, 0] * (n // 2))
    noise = torch.randn(n, d, generator=gen)
    if cov_scale is not None:
        noise = noise * cov_scale
    truth = torch.zeros(d)
    truth[0] = 1.0
    acts = noise + signal * (labels[:, None].float() - 0.5) * truth
    return acts, labels, truth


def test_fit_logistic_1d_matches_a_generic_optimiser() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(3.0, 2.0, size=500)
    y = (rng.random(500) < 1 / (1 + np.exp(-(1.5 * (s - 3.0) + 0.4)))).astype(int)

    def nll(theta: np.ndarray) -> float:
        return float(np.logaddexp(0, -np.where(y, 1, -1) * (theta[0] * s + theta[1])).sum())

    ref = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-9}).x
    w, b = fit_logistic_1d(s, y)
    assert w == pytest.approx(ref[0], rel=1e-4)
    assert b == pytest.approx(ref[1], rel=1e-4, abs=1e-4)


def test_fit_logistic_1d_puts_the_threshold_in_the_gap_of_separable_data() -> None:
    s = np.array([-3.0, -2.0, -1.0, 4.0, 5.0, 6.0])
    w, b = fit_logistic_1d(s, np.array([0, 0, 0, 1, 1, 1]))
    assert w > 0
    assert -1.0 < -b / w < 4.0


@pytest.mark.parametrize("kind", sorted(PROBE_KINDS))
def test_every_probe_finds_a_planted_truth_direction_and_generalises(kind: str) -> None:
    acts, labels, truth = planted(400, 16, seed=1)
    test_acts, test_labels, _ = planted(400, 16, seed=2)
    probe = make_probe(kind).fit(acts, labels)
    assert probe.name == kind
    assert accuracy(probe, test_acts, test_labels) > 0.85  # Bayes rate 0.93
    assert cosine(probe.direction, truth) > 0.8
    assert probe.predict(test_acts).dtype == torch.int64


@pytest.mark.parametrize("kind", sorted(PROBE_KINDS))
def test_a_probe_on_pure_noise_is_near_chance(kind: str) -> None:
    acts, labels, _ = planted(400, 16, seed=3, signal=0.0)
    test_acts, test_labels, _ = planted(2000, 16, seed=4, signal=0.0)
    assert abs(accuracy(make_probe(kind).fit(acts, labels), test_acts, test_labels) - 0.5) < 0.06


def test_the_paper_probe_learns_a_bias_that_the_mass_mean_probe_lacks() -> None:
    acts, labels, _ = planted(400, 8, seed=5)
    shifted = acts + 3.0 * torch.ones(8)  # uncentered: sigmoid(x . d) without bias is fooled
    assert accuracy(make_probe("mm_lr").fit(shifted, labels), shifted, labels) > 0.8
    assert accuracy(make_probe("mass_mean").fit(shifted, labels), shifted, labels) < 0.7


def test_covariance_correction_helps_when_noise_is_anisotropic() -> None:
    # noise is large along an axis correlated with the truth axis: Sigma^+ d undoes it
    d = 8
    scale = torch.ones(d)
    gen = torch.Generator().manual_seed(6)
    labels = torch.tensor([1, 0] * 300)
    z = torch.randn(600, d, generator=gen) * scale
    z[:, 0] += 4.0 * z[:, 1]
    acts = z + 1.5 * (labels[:, None].float() - 0.5) * torch.eye(d)[0]
    gen2 = torch.Generator().manual_seed(7)
    z2 = torch.randn(600, d, generator=gen2)
    z2[:, 0] += 4.0 * z2[:, 1]
    acts2 = z2 + 1.5 * (labels[:, None].float() - 0.5) * torch.eye(d)[0]
    plain = accuracy(make_probe("mass_mean").fit(acts, labels), acts2, labels)
    iid = accuracy(make_probe("mass_mean_iid").fit(acts, labels), acts2, labels)
    assert iid > plain + 0.1


def test_correct_returns_per_statement_hits_for_bootstrapping() -> None:
    acts, labels, _ = planted(10, 4, seed=8, signal=20.0)
    hits = correct(make_probe().fit(acts, labels), acts, labels)
    assert hits.shape == (10,)
    assert hits.dtype == np.float64
    assert hits.sum() == 10


def test_unfitted_probe_and_unknown_kind_raise() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        make_probe("mm_lr").predict(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown probe kind"):
        make_probe("ccs")


def test_transfer_matrix_transfers_between_shared_geometries_but_not_to_a_rotated_model() -> None:
    acts, labels, _ = planted(400, 16, seed=9)
    test_acts, test_labels, _ = planted(400, 16, seed=10)
    rot, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(11)))
    train = {"base": (acts, labels), "post": (acts * 1.1, labels), "control": (acts @ rot, labels)}
    test = {"base": (test_acts, test_labels), "post": (test_acts * 1.1, test_labels),
            "control": (test_acts @ rot, test_labels)}
    matrix = transfer_matrix(train, test)
    assert set(matrix) == {(a, b) for a in train for b in test}
    assert matrix[("base", "post")] > 0.8
    assert matrix[("control", "control")] > 0.8
    assert matrix[("control", "post")] < 0.7


def test_a_probe_on_a_fixed_random_direction_is_a_chance_level_control() -> None:
    acts, labels, truth = planted(400, 64, seed=12)
    test_acts, test_labels, _ = planted(2000, 64, seed=13)
    gen = torch.Generator().manual_seed(14)
    random_dir = torch.randn(64, generator=gen)
    random_dir -= (random_dir @ truth) * truth  # orthogonal to the planted direction
    probe = ProjectionLRProbe(direction=random_dir).fit(acts, labels)
    torch.testing.assert_close(probe.direction, random_dir.to(torch.float64))
    assert abs(accuracy(probe, test_acts, test_labels) - 0.5) < 0.06
    fixed_truth = ProjectionLRProbe(direction=truth).fit(acts, labels)
    assert accuracy(fixed_truth, test_acts, test_labels) > 0.85
