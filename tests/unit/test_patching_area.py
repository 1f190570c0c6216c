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


def test_a_second_run_reads_every_map_and_clean_ld_from_the_store_without_patching(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from mechtests.measures.context import FamilyContext
    from mechtests.measures.knowledge import runs
    from mechtests.measures.knowledge.runs import knowledge_run

    first = knowledge_run(ctx, "cities")

    def no_compute(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("recomputed a cached map or clean LD")

    monkeypatch.setattr(runs, "patch_heatmaps_many", no_compute)
    monkeypatch.setattr(runs, "clean_logit_diffs", no_compute)
    again = knowledge_run(FamilyContext(ctx.family, ctx.options), "cities")
    assert again.maps.keys() == first.maps.keys()
    for key, heat in first.maps.items():
        np.testing.assert_array_equal(again.maps[key], heat)
    for role, ld in first.ld_true.items():
        np.testing.assert_array_equal(again.ld_true[role], ld)
    assert again.engines == first.engines


def test_a_map_entry_with_a_nan_inside_a_window_is_recomputed_with_a_warning(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mechtests.measures.context import FamilyContext
    from mechtests.measures.knowledge.runs import knowledge_run

    knowledge_run(ctx, "cities")
    entries = sorted(ctx.store.root.glob("*/patching-cities-*.safetensors"))
    assert entries
    path = entries[0]
    with safe_open(str(path), framework="pt") as entry:  # keep its key and engine labels
        meta = entry.metadata()
    tensors = load_file(str(path))
    tensors["ld:0"][0, 0, -1] = torch.nan  # a half-written map: a hole inside the window
    save_file(tensors, str(path), meta)
    fresh = FamilyContext(ctx.family, ctx.options)
    with pytest.warns(UserWarning, match="unusable"):
        run = knowledge_run(fresh, "cities")
    assert fresh.store.misses >= 1
    assert all(not np.isnan(m[:, :, -1]).any() for m in run.maps.values())


def test_another_prompt_prefix_on_a_source_misses_the_cached_maps(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mechtests.families import ModelSpec
    from mechtests.measures.context import FamilyContext
    from mechtests.measures.knowledge import runs
    from mechtests.measures.knowledge.runs import knowledge_run

    knowledge_run(ctx, "cities")
    spec = ctx.family.models["instruct"]
    family = replace(ctx.family, models={**ctx.family.models,
                                         "instruct": ModelSpec("instruct", spec.ref, "Note: ")})
    patched: list[str] = []
    real = runs.patch_heatmaps_many

    def counting(backend: Any, *args: Any, **kwargs: Any) -> Any:
        patched.append(backend.name)
        return real(backend, *args, **kwargs)

    monkeypatch.setattr(runs, "patch_heatmaps_many", counting)
    knowledge_run(FamilyContext(family, ctx.options), "cities")
    # instruct's maps (own, base -> instruct) and every map with instruct as a source
    assert any(name.endswith("/instruct") for name in patched)
    assert any(name.endswith("/base") for name in patched)


def test_a_fully_cached_visit_reads_no_activations(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mechtests.measures.context import FamilyContext
    from mechtests.measures.knowledge import runs
    from mechtests.measures.knowledge.runs import knowledge_run

    knowledge_run(ctx, "cities")
    fresh = FamilyContext(ctx.family, ctx.options)
    monkeypatch.setattr(fresh, "activations", lambda *a, **k: pytest.fail("read activations"))
    monkeypatch.setattr(runs, "patch_heatmaps_many", lambda *a, **k: pytest.fail("patched"))
    assert knowledge_run(fresh, "cities").maps.keys() == knowledge_run(ctx, "cities").maps.keys()
