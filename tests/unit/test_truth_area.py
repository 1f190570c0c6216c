"""The truth area end to end on the tiny random family (plumbing; verdicts mean nothing)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.claims.model import Measurement
from mechtests.claims.table import load_claims
from mechtests.data.statements import PAPER_TRUTH_DATASETS
from mechtests.families import load_families
from mechtests.measures import get_measure
from mechtests.measures.context import FamilyContext, RunOptions
from mechtests.measures.runner import run_measure
from mechtests.measures.truth.measures import truth_directions
from mechtests.measures.truth.runs import role_truth, steering, truth_datasets

SHARED_DATASETS = Path(__file__).parents[2] / ".." / "shared" / "datasets"
TRUTH_CLAIMS = [c for c in load_claims() if c.area == "truth"]
LOCAL_CLAIMS = [c for c in TRUTH_CLAIMS if c.id != "truth.direction.beats_refusal"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the tiny checkpoints are built once."""
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("truth_tiny")


@pytest.fixture(scope="module")
def tiny_ctx(root: Path) -> FamilyContext:
    options = RunOptions(cache_dir=root / "cache", report_dir=root / "report", device="cpu",
                         progress=False, max_examples=24)
    return FamilyContext(load_families()["tiny"], options)


def test_truth_claims_are_the_six_paper_claims_with_both_pairs() -> None:
    ids = {c.id for c in TRUTH_CLAIMS}
    assert {"truth.direction.cosine", "truth.direction.beats_refusal",
            "truth.probe.transfer_accuracy", "truth.probe.transfer_gap",
            "truth.steering.forward_effect", "truth.steering.forward_ratio",
            "truth.steering.backward_ratio", "truth.steering.random_control"} == ids
    for claim in TRUTH_CLAIMS:
        assert claim.pairs == (("base", "sft"), ("base", "instruct"))


@pytest.mark.parametrize("claim", LOCAL_CLAIMS, ids=lambda c: c.id)
def test_every_truth_measure_returns_a_metric_control_and_interval(
    tiny_ctx: FamilyContext, claim: object
) -> None:
    from mechtests.claims.model import Claim

    assert isinstance(claim, Claim)
    m = run_measure(tiny_ctx, claim, ("base", "instruct"))
    assert isinstance(m, Measurement)
    assert math.isfinite(m.metric)
    assert m.control is not None
    assert math.isfinite(m.control)
    assert m.control_label
    assert m.interval is not None
    assert all(math.isfinite(x) for x in m.interval)
    assert m.n is not None
    assert m.n > 0
    if claim.id.startswith(("truth.direction.", "truth.probe.")):
        assert m.figures
    for figure in m.figures:
        assert Path(figure.path).is_file()


@pytest.mark.parametrize("claim", [c for c in LOCAL_CLAIMS if ".steering." in c.id],
                         ids=lambda c: c.id)
def test_steering_measures_report_the_own_vector_effect_their_precondition_reads(
    tiny_ctx: FamilyContext, claim: Any
) -> None:
    m = get_measure(claim.id)(tiny_ctx, claim, ("base", "instruct"))
    own = m.details.get("own", "instruct")  # the ratios name the steered model; else post
    assert m.details["model"] == own
    assert m.details["own_ie"] == pytest.approx(m.details[own]["ie"])


def test_truth_directions_cover_every_role_at_the_probe_layer(tiny_ctx: FamilyContext) -> None:
    dirs = truth_directions(tiny_ctx)
    assert set(dirs) == {"base", "sft", "instruct", "control"}
    assert all(d.shape == (64,) and d.dtype == torch.float64 for d in dirs.values())
    roles = role_truth(tiny_ctx)
    layer = tiny_ctx.family.truth.probe_layer
    assert set(roles["base"].directions) == {0, 1}
    torch.testing.assert_close(dirs["base"], roles["base"].directions[layer])


def test_steering_is_reused_from_the_disk_cache_without_loading_a_model(
    tiny_ctx: FamilyContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = steering(tiny_ctx)
    fresh = FamilyContext(tiny_ctx.family, tiny_ctx.options)

    def no_model(role: str) -> None:
        raise AssertionError(f"model {role} loaded on a warm cache")

    monkeypatch.setattr(fresh, "backend", no_model)
    second = steering(fresh)
    assert set(second) == {"base", "sft", "instruct"}
    for model, run in first.items():
        assert second[model].positions == run.positions
        torch.testing.assert_close(torch.from_numpy(second[model].result.false_add["base"]),
                                   torch.from_numpy(run.result.false_add["base"]))


@pytest.mark.paper_data("du2025")
def test_paper_truth_datasets_run_through_the_probe_pipeline_on_the_tiny_family(
    root: Path,
) -> None:
    tiny = load_families()["tiny"]
    paper = load_families()["llama31"].truth
    family = replace(tiny, datasets="paper", truth=replace(
        paper, probe_layer=tiny.truth.probe_layer, intervene_layer=tiny.truth.intervene_layer))
    options = RunOptions(cache_dir=root / "cache", report_dir=root / "paper_report",
                         device="cpu", progress=False, max_examples=32,
                         datasets_dir=SHARED_DATASETS)
    ctx = FamilyContext(family, options)
    data = truth_datasets(ctx)
    assert set(data) == set(PAPER_TRUTH_DATASETS)
    assert all(len(d) == 32 for d in data.values())
    by_id = {c.id: c for c in TRUTH_CLAIMS}
    for claim_id in ("truth.direction.cosine", "truth.probe.transfer_accuracy",
                     "truth.steering.forward_effect"):
        claim = by_id[claim_id]
        m = get_measure(claim.id)(ctx, claim, ("base", "instruct"))
        assert math.isfinite(m.metric)
    run = steering(ctx)["instruct"]
    assert run.n_true + run.n_false == 32
    assert run.positions == [-5, -4]  # " This statement is:" = 3 words for the tiny tokenizer
