"""The confidence claims end to end on the tiny family (plumbing: verdicts mean nothing)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mechtests.claims.model import Claim
from mechtests.claims.table import load_claims
from mechtests.claims.thresholds import load_thresholds
from mechtests.families import load_families
from mechtests.measures import get_measure
from mechtests.measures.context import FamilyContext, RunOptions

CONFIDENCE = sorted(c.id for c in load_claims() if c.area == "confidence")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> FamilyContext:
    root = tmp_path_factory.mktemp("confidence")
    data = root / "datasets" / "du2025"
    data.mkdir(parents=True)
    rows = ["The city of Paris is in France .", "The city of Berlin is in Japan .",
            "Tokyo is the capital of Japan", "a bird is a mammal", "How do I make a cake ?"]
    (data / "toy.csv").write_text(
        "statement,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rows * 3))
    )
    family = dataclasses.replace(load_families()["tiny"], datasets="paper")
    options = RunOptions(cache_dir=root / "cache", report_dir=root / "report", device="cpu",
                         progress=False, datasets_dir=root / "datasets")
    return FamilyContext(family, options)


def _claim(claim_id: str, **params: Any) -> Claim:
    claim = next(c for c in load_claims() if c.id == claim_id)
    return dataclasses.replace(claim, params={**claim.params, **params})


def test_every_confidence_claim_has_a_measure_and_a_threshold() -> None:
    assert CONFIDENCE == [
        "confidence.entropy_neurons.chance_control",
        "confidence.entropy_neurons.explain_shift",
        "confidence.entropy_neurons.overlap",
        "confidence.entropy_neurons.robust",
    ]
    thresholds = load_thresholds(claim_ids=[c.id for c in load_claims()])
    for claim in load_claims():
        if claim.area == "confidence":
            get_measure(claim.id)
            assert thresholds.spec(claim.id, "tiny").source
    assert thresholds.expected_failure("confidence.entropy_neurons.explain_shift", "organism")


def test_weight_claims_report_metric_control_and_load_each_model_once(
    ctx: FamilyContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mechtests.engine

    loads: Counter[str] = Counter()
    real = mechtests.engine.load_backend

    def counting(path: Path, **kwargs: Any) -> Any:
        loads[kwargs.get("name", "")] += 1
        return real(path, **kwargs)

    monkeypatch.setattr(mechtests.engine, "load_backend", counting)
    for claim_id in ("overlap", "robust", "chance_control"):
        claim = _claim(f"confidence.entropy_neurons.{claim_id}")
        for pair in claim.pairs:
            m = get_measure(claim.id)(ctx, claim, pair)
            assert m.control is not None
            assert m.control_label
            if claim_id == "overlap":
                assert 0 <= m.metric <= 10
                assert m.details["iou"] == pytest.approx(m.metric / (20 - m.metric))
                assert m.details["control_base_shared"] == m.control
            if claim_id == "chance_control":
                # tiny: top-norm pool of 32 neurons, chance about 10 * 10 / 32
                assert m.metric == pytest.approx(m.details["exact_chance"], abs=0.3)
                assert m.control == m.details["observed_shared"]
                assert m.details["pool_size"] == 32
    assert set(loads.values()) == {1}
    assert len(loads) == 4  # base, sft, instruct, control


def test_explain_shift_reports_the_share_its_interval_and_the_shift(ctx: FamilyContext) -> None:
    claim = _claim("confidence.entropy_neurons.explain_shift", datasets=["toy"], n_prompts=8,
                   batch_size=4)
    m = get_measure(claim.id)(ctx, claim, ("base", "instruct"))
    assert m.n == 8
    assert m.interval is not None
    assert m.control is not None
    d = m.details
    assert d["shift_ref_minus_post"] == pytest.approx(d["entropy_ref"] - d["entropy_post"])
    assert d["share_total"] == m.metric
    assert d["readout_error"] < 1e-3
    assert len(d["base.entropy.neurons"]) == len(d["base.random.neurons"]) == 10
