"""The refusal calibration rule (mechtests.measures.refusal.calibrate) on the tiny random family.

Random weights never refuse, so the judges here are stand-ins: one that reads every generation
as a refusal (the all-layer ablation is harmless, so ablation ranks the sites) and one that
reads none (no refusals to ablate, so addition ranks them and no coefficient reaches the target).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from mechtests.families import load_families
from mechtests.measures.context import FamilyContext, RunOptions
from mechtests.measures.refusal.calibrate import (
    CalibrationRule,
    TrainingRequests,
    calibrate_refusal,
)

RULE = CalibrationRule(coef_grid=(0.5, 1.0), positions=(-1,), n_eval=3)
HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[FamilyContext, TrainingRequests]:
    root = Path(tmp_path_factory.mktemp("calibrate"))
    family = dataclasses.replace(load_families()["tiny"], datasets="paper")
    ctx = FamilyContext(family, RunOptions(cache_dir=root / "cache", report_dir=root / "report",
                                           device="cpu", progress=False))
    data = TrainingRequests(("TRUE this :", "this TRUE", ": TRUE this") * 4,
                            ("FALSE is", "statement FALSE", "is statement") * 4,
                            family.refusal.templates)
    return ctx, data


def _run(tiny: tuple[FamilyContext, TrainingRequests], refuses: bool) -> dict[str, Any]:
    ctx, data = tiny
    try:
        return calibrate_refusal(ctx.backend, ("base", "instruct"), "instruct", data, RULE, HOOKS,
                                 lambda _text: refuses)
    finally:
        ctx.release()


def test_a_harmless_random_ablation_lets_ablation_choose_the_site(tiny: Any) -> None:
    got = _run(tiny, refuses=True)
    assert got["random_ablation_kept"] == 1.0
    assert got["chosen_by"] == "ablation"
    n_layers = tiny[0].backend("instruct").n_layers
    assert [s["layer"] for s in got["sweep"]] == list(range(1, n_layers))
    assert (got["layer"], got["position"]) == (n_layers - 1, -1)  # all tie: the later layer
    scan = got["addition"]["instruct"]
    assert got["addition_coefs"]["instruct"] == round(0.5 * scan["diff_norm"], 1)
    assert got["subtraction_coef"] == got["addition_coefs"]["instruct"]


def test_without_refusals_to_ablate_addition_chooses_the_site_and_the_largest_coefficient(
        tiny: Any) -> None:
    got = _run(tiny, refuses=False)
    assert got["chosen_by"].startswith("addition")
    assert all("added_refusal" in s for s in got["sweep"])
    post = got["addition"]["instruct"]
    assert post["coef"] is None
    assert post["best_below_target"] is None
    assert got["subtraction_coef"] == max(post["rates"])
    assert set(got["addition_coefs"].values()) == {got["subtraction_coef"]}
    json.dumps(got, default=str)  # the command prints it
