"""The cross-model null of a family without a control base: the source model's FALSE run.

Known answer: a "post" model that is its base checkpoint. Base -> post patching is then
self-patching (``R = 1`` at the readout cell, the forward recovery ratio is 1), and the null, the
base's own FALSE-prompt activations patched into the identical post model's FALSE run, changes
nothing (``R = 0`` at every cell). On the tiny family's real post model (the base plus noise) the
null differs from ``LD_F`` (it carries the model difference) and agrees with the real patch on
the columns before the first TRUE/FALSE difference, where the source's prompts agree.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from mechtests.claims.table import load_claims
from mechtests.measures import get_measure


def _ctx(tmp: Any, post_is_base: bool) -> Any:
    from mechtests.families import load_families
    from mechtests.measures.context import FamilyContext, RunOptions

    family = load_families()["tiny"]
    models = {role: spec for role, spec in family.models.items() if role != "control"}
    if post_is_base:
        models["instruct"] = models["base"]
    family = replace(family, name="tiny-no-control", models=models,
                     knowledge=replace(family.knowledge, datasets=("cities",)))
    options = RunOptions(cache_dir=tmp / "cache", report_dir=tmp / "report", device="cpu",
                         max_examples=5, progress=False)
    return FamilyContext(family, options)


@pytest.fixture(scope="module")
def identical_post(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _ctx(tmp_path_factory.mktemp("identical-post"), post_is_base=True)


@pytest.fixture(scope="module")
def noisy_post(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _ctx(tmp_path_factory.mktemp("noisy-post"), post_is_base=False)


def _measure(ctx: Any, claim_id: str) -> Any:
    claim = next(c for c in load_claims() if c.id == claim_id)
    claim = replace(claim, params={**claim.params, "n_boot": 20})
    return get_measure(claim.id)(ctx, claim, ("base", "instruct"))


def test_without_a_control_base_the_null_of_a_patch_is_its_source_models_false_run(
    identical_post: Any,
) -> None:
    from mechtests.measures.knowledge.runs import knowledge_run, null_label, null_source

    assert null_source(identical_post, "base") == "base:false"
    assert "FALSE-prompt" in null_label(identical_post, "base")
    run = knowledge_run(identical_post, "cities")
    assert {("base:false", "instruct"), ("instruct:false", "base")} <= set(run.maps)


def test_the_null_recovers_nothing_where_the_true_patch_recovers_everything(
    identical_post: Any,
) -> None:
    from mechtests.measures.knowledge.runs import knowledge_run

    run = knowledge_run(identical_post, "cities")
    real, null = run.recovered(("base", "instruct")), run.recovered(("base:false", "instruct"))
    assert real[-1, -1] == pytest.approx(1.0, abs=1e-3)
    assert np.nanmax(np.abs(null)) == pytest.approx(0.0, abs=1e-3)


def test_forward_recovery_of_an_identical_post_model_is_one_against_a_null_of_zero(
    identical_post: Any,
) -> None:
    m = _measure(identical_post, "crossmodel.forward.recovery")
    assert m.metric == pytest.approx(1.0, abs=1e-3)
    assert m.control == pytest.approx(0.0, abs=1e-3)
    assert m.control_label == "base's own FALSE-prompt activations patched into instruct"


def test_asymmetry_null_patches_each_direction_with_its_own_sources_false_run(
    identical_post: Any,
) -> None:
    m = _measure(identical_post, "crossmodel.asymmetry")
    assert m.metric == pytest.approx(0.0, abs=1e-3)
    assert m.control == pytest.approx(0.0, abs=1e-3)
    assert "base's own FALSE-prompt activations -> instruct" in m.control_label
    assert "instruct's own FALSE-prompt activations -> base" in m.control_label


def test_the_null_carries_the_model_difference_and_matches_the_real_patch_before_the_facts(
    noisy_post: Any,
) -> None:
    from mechtests.measures.knowledge.runs import knowledge_run

    run = knowledge_run(noisy_post, "cities")
    real, null = run.maps[("base", "instruct")], run.maps[("base:false", "instruct")]
    first = run.first_informative_column
    assert first > 0
    np.testing.assert_allclose(null[:, :, :first], real[:, :, :first], rtol=1e-4, atol=1e-5)
    ld_false = run.ld_false["instruct"][:, None, None]
    assert np.nanmax(np.abs(null - ld_false)) > 1e-4
