"""The knowledge area end to end on the tiny random family: every claim runs and reports."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mechtests.claims.table import load_claims
from mechtests.claims.thresholds import load_thresholds
from mechtests.measures import get_measure
from mechtests.measures.runner import run_measure

AREAS = ("knowledge", "crossmodel")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mechtests.families import load_families
    from mechtests.measures.context import FamilyContext, RunOptions

    tmp = tmp_path_factory.mktemp("knowledge")
    options = RunOptions(cache_dir=tmp / "cache", report_dir=tmp / "report", device="cpu",
                         max_examples=5, progress=False)
    return FamilyContext(load_families()["tiny"], options)


def _claims() -> list[Any]:
    return [c for c in load_claims() if c.area in AREAS]


def test_every_knowledge_claim_has_a_threshold_with_a_source_and_a_control() -> None:
    claims = _claims()
    assert {c.id for c in claims} >= {
        "knowledge.heatmap.correlation", "knowledge.heatmap.knowledge_maxdiff",
        "knowledge.heatmap.hot_cells", "knowledge.heatmap.peak_layer",
        "knowledge.heatmap.reversed_control", "crossmodel.forward.correlation",
        "crossmodel.forward.recovery", "crossmodel.asymmetry", "crossmodel.self_patch"}
    thresholds = load_thresholds(claim_ids=[c.id for c in load_claims()])
    for claim in claims:
        spec = thresholds.spec(claim.id, "organism")
        assert spec.source, claim.id
        assert spec.control is not None, claim.id


@pytest.mark.parametrize("claim_id", [c.id for c in _claims()])
def test_measure_returns_metric_control_and_artifacts(ctx: Any, claim_id: str) -> None:
    claim = next(c for c in _claims() if c.id == claim_id)
    claim = replace(claim, params={**claim.params, "n_boot": 20})
    m = run_measure(ctx, claim, ("base", "instruct"))
    assert m.control is not None
    assert m.control_label
    # X3 pools every dataset that can decide (all of them when none can)
    datasets = m.details["datasets_decidable"] or len(ctx.family.knowledge.datasets)
    assert m.n == (5 * datasets if claim_id == "crossmodel.asymmetry" else 5)
    assert isinstance(m.metric, float)
    assert isinstance(m.control, float)
    if claim_id != "crossmodel.self_patch":
        assert m.interval is not None
    assert m.figures
    for figure in m.figures:
        assert Path(figure.path).is_file()
        assert Path(figure.path).stat().st_size > 1000


def test_the_control_base_is_visited_and_the_readout_cell_recovers(ctx: Any) -> None:
    from mechtests.measures.knowledge.runs import knowledge_run

    run = knowledge_run(ctx, "cities")
    assert ("control", "control") in run.maps
    assert ("null", "instruct") in run.maps
    assert run.maps[("base", "base")].shape == (5, run.n_layers, run.pset.width)
    assert all(e.startswith("suffix") for e in run.engines.values()), run.engines
    gap = float(run.ld_true["base"].mean() - run.ld_false["base"].mean())
    cell = float(run.heat(("base", "base"))[-1, -1] - run.ld_false["base"].mean())
    assert math.isclose(cell, gap, rel_tol=1e-3, abs_tol=1e-6)


def test_self_patch_reports_the_dataset_with_the_weakest_control_contrast(ctx: Any) -> None:
    claim = next(c for c in _claims() if c.id == "crossmodel.self_patch")
    m = get_measure(claim.id)(ctx, claim, ("base", "instruct"))
    rows = m.details["datasets"]
    weakest = min(rows, key=lambda d: rows[d]["control"] - rows[d]["metric"])
    assert m.details["dataset"] == weakest
    assert m.control == pytest.approx(rows[weakest]["control"])
