"""The ablation claims need an all-layer projection that does not wreck the model by itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mechtests.claims.model import Measurement, Verdict
from mechtests.claims.table import load_claims
from mechtests.claims.thresholds import load_thresholds
from mechtests.claims.verdict import judge
from mechtests.measures.refusal import measures as refusal
from mechtests.measures.refusal.runs import Condition

ABLATION_CLAIMS = ("refusal.ablation.own_post", "refusal.forward.ablation",
                   "refusal.backward.ablation")


@pytest.fixture(scope="module")
def thresholds() -> Any:
    return load_thresholds(claim_ids=[c.id for c in load_claims()])


def _measurement(kept: float) -> Measurement:
    """A decided-looking ablation result: no refusal left, a tight interval, a strong baseline."""
    return Measurement(metric=0.0, control=1.0, control_label="random direction",
                       interval=(0.0, 0.05), n=100,
                       details={"baseline": 0.9, "random_ablation_kept": kept})


@pytest.mark.parametrize("claim_id", ABLATION_CLAIMS)
def test_a_random_ablation_that_removes_most_refusals_makes_the_cell_inconclusive(
        thresholds: Any, claim_id: str) -> None:
    got = judge(_measurement(kept=0.0), thresholds.spec(claim_id, "gemma3-270m"))
    assert got.verdict is Verdict.INCONCLUSIVE
    assert "random_ablation_kept 0 < 0.5" in got.message


@pytest.mark.parametrize("claim_id", ABLATION_CLAIMS)
def test_a_random_ablation_that_leaves_the_refusals_lets_the_cell_be_decided(
        thresholds: Any, claim_id: str) -> None:
    got = judge(_measurement(kept=1.0), thresholds.spec(claim_id, "organism"))
    assert got.verdict in (Verdict.PASS, Verdict.FAIL)
    assert all(check.holds for check in got.checks)


def test_a_model_that_refuses_nothing_has_no_random_ablation_share(thresholds: Any) -> None:
    got = judge(_measurement(kept=float("nan")),
                thresholds.spec("refusal.backward.ablation", "gemma3-270m"))
    assert got.verdict is Verdict.INCONCLUSIVE


def _fake_flags(rates: dict[str, list[float]]) -> Any:
    def flags(_ctx: object, _model: str, cond: Condition, _scorer: str = "paper") -> np.ndarray:
        return np.array(rates[cond.name], dtype=np.float64)

    return flags


def test_random_ablation_kept_is_the_share_of_refusals_the_random_ablation_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refusal, "flags", _fake_flags({
        "baseline/none/harmful_test": [1, 1, 1, 1, 0],
        "ablation/random/harmful_test": [1, 0, 0, 0, 0]}))
    assert refusal.random_ablation_kept(object(), "instruct", "paper") == pytest.approx(0.25)


def test_random_ablation_kept_is_nan_when_the_model_refuses_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refusal, "flags", _fake_flags({
        "baseline/none/harmful_test": [0, 0], "ablation/random/harmful_test": [0, 0]}))
    assert np.isnan(refusal.random_ablation_kept(object(), "base", "paper"))
