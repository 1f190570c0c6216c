"""The refusal area end to end on the tiny random family (plumbing only: verdicts mean nothing)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch

from mechtests.claims.table import load_claims
from mechtests.families import load_families
from mechtests.measures import get_measure
from mechtests.measures.context import FamilyContext, RunOptions
from mechtests.measures.refusal.measures import SWEEP_MIN_RANDOM_ABLATION_KEPT
from mechtests.measures.refusal.runs import conditions_for, refusal_directions
from mechtests.measures.refusal.select import sweep as select_sweep
from mechtests.measures.runner import run_measure

# words every tiny vocabulary has (mechtests.engine.tiny.REQUIRED_WORDS)
HARMFUL_WORDS, HARMLESS_WORDS = ("TRUE", "this", ":"), ("FALSE", "statement", "is")
N = 6


def _write_splits(root: Path) -> None:
    rng = random.Random(0)

    def make(words: tuple[str, ...], k: int) -> list[str]:
        return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(k)]

    body = {"harmful_train_128": make(HARMFUL_WORDS, 12),
            "harmless_train_128": make(HARMLESS_WORDS, 12),
            "harmful_test_100": make(HARMFUL_WORDS, 10),
            "harmless_test_100": make(HARMLESS_WORDS, 10)}
    (root / "refusal_splits").mkdir(parents=True)
    (root / "refusal_splits" / "du2025_refusal_splits.json").write_text(json.dumps(body))


def _context(tmp: Path) -> FamilyContext:
    family = dataclasses.replace(load_families()["tiny"], datasets="paper")
    options = RunOptions(cache_dir=tmp / "cache", report_dir=tmp / "report", device="cpu",
                         max_examples=N, datasets_dir=tmp / "data", progress=False)
    return FamilyContext(family, options)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(tmp_path_factory.mktemp("refusal"))
    _write_splits(root / "data")
    return root


@pytest.fixture(scope="module")
def measured(workdir: Path) -> dict[tuple[str, tuple[str, str]], object]:
    import mechtests.engine as engine

    ctx = _context(workdir)
    loads: list[str] = []
    original = engine.load_backend

    def counting(path: Path, **kw: object) -> object:
        loads.append(str(kw.get("name")))
        return original(path, **kw)  # type: ignore[arg-type]

    engine.load_backend = counting  # type: ignore[assignment]
    try:
        out: dict[tuple[str, tuple[str, str]], object] = {}
        for claim in load_claims():
            if claim.area != "refusal" or claim.id == "refusal.direction.below_truth":
                continue
            for pair in claim.pairs:
                out[(claim.id, pair)] = run_measure(ctx, claim, pair)
    finally:
        engine.load_backend = original  # type: ignore[assignment]
    out[("loads", ("", ""))] = loads
    out[("ctx", ("", ""))] = ctx
    return out


def test_directions_are_unit_float32_for_every_role(measured: dict) -> None:
    ctx = measured[("ctx", ("", ""))]
    dirs = ctx.memo("refusal.directions", lambda: pytest.fail("not memoised"))
    assert set(dirs) == {"base", "sft", "instruct", "control"}
    for role, d in dirs.items():
        assert d.dtype == torch.float32, role
        assert d.norm().item() == pytest.approx(1.0, abs=1e-5), role
    assert refusal_directions(ctx) is dirs


def test_every_refusal_measure_returns_a_metric_a_control_and_an_interval(measured: dict) -> None:
    claims = [k for k in measured if k[0].startswith("refusal.")]
    assert len(claims) == 14  # 7 claims x 2 pairs (R2 needs the truth area)
    for key in claims:
        m = measured[key]
        ratio = key[0] in ("refusal.forward.ablation", "refusal.backward.ablation")
        if not ratio or m.details["baseline"] > 0:
            assert math.isfinite(m.metric), key
            assert math.isfinite(m.control), key
        assert m.interval is not None, key
        assert m.control_label, key


def test_rates_are_recorded_under_both_scorers_with_a_plot(measured: dict) -> None:
    m = measured[("refusal.ablation.own_post", ("base", "instruct"))]
    assert set(m.details["rates"]) == {"paper", "substring"}
    assert "instruct:ablation/instruct/harmful_test" in m.details["rates"]["paper"]
    assert m.figures
    assert all(Path(f.path).is_file() for f in m.figures)


def test_evaluation_respects_the_subsample(measured: dict) -> None:
    assert measured[("refusal.addition.own_post", ("base", "sft"))].n == N
    assert measured[("refusal.direction.low_cosine", ("base", "sft"))].n == 2 * N


def test_each_model_is_loaded_at_most_twice(measured: dict) -> None:
    loads = measured[("loads", ("", ""))]
    for role in ("base", "sft", "instruct", "control"):
        assert loads.count(f"tiny/{role}") <= 2, loads
    assert loads.count("tiny/control") == 1  # extraction only: the control model is never run


def test_the_selection_sweep_runs_only_where_a_random_ablation_keeps_the_refusals(
        measured: dict) -> None:
    details = measured[("refusal.ablation.own_post", ("base", "instruct"))].details
    kept = details["random_ablation_kept"]
    ran = "skipped" not in details["selection_sweep"]
    assert ran == (not math.isnan(kept) and kept >= SWEEP_MIN_RANDOM_ABLATION_KEPT)
    if not ran:
        assert "cannot rank candidate sites" in details["selection_sweep"]["skipped"]


def test_the_selection_sweep_reports_the_configured_and_skipped_sites(
        measured: dict, workdir: Path) -> None:
    sweep = select_sweep(_context(workdir), "instruct")
    assert sweep["configured"] == {"layer": 1, "position": -1}
    assert [0, -1] in sweep["skipped_sites"]  # the shared '<assistant>' embedding at layer 0
    assert all(not math.isnan(c["kl"]) for c in sweep["candidates"])


def test_a_second_run_reads_generations_from_disk(measured: dict, workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mechtests.engine as engine

    ctx = _context(workdir)
    monkeypatch.setattr(engine, "load_backend", lambda *a, **k: pytest.fail("model loaded"))
    claim = next(c for c in load_claims() if c.id == "refusal.backward.addition")
    again = get_measure(claim.id)(ctx, claim, ("base", "instruct"))
    assert again.metric == measured[(claim.id, ("base", "instruct"))].metric


def test_conditions_cover_own_transferred_random_and_control_directions(workdir: Path) -> None:
    names = {c.name for c in conditions_for(_context(workdir), "instruct")}
    for src in ("instruct", "base", "random", "control", "half:instruct"):
        assert f"ablation/{src}/harmful_test" in names
        assert f"addition/{src}/harmless_test" in names


def test_the_ablation_claims_report_what_a_random_ablation_leaves(measured: dict) -> None:
    for key, m in measured.items():
        if key[0] in ("refusal.ablation.own_post", "refusal.forward.ablation",
                      "refusal.backward.ablation"):
            kept = m.details["random_ablation_kept"]
            assert math.isnan(kept) or kept >= 0.0, key
