"""A cross-model cell decides only where the fact moves the readout more than swapping models does.

Known answer: a synthetic pair of models on one dataset whose cross-model map is the post model's
own map (the fact, gap ``g`` at the cells that carry it) plus the model offset ``d`` at the last
column's late layers, where the source's readout reaches. With ``d`` eight times ``g`` (the
Gemma-3-270M ``cities`` numbers) the offset sets the map's range, and the forward correlation is
INCONCLUSIVE on ``fact_to_offset``; with ``d = g / 5`` the same claim is decided (PASS).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mechtests.claims.model import Verdict
from mechtests.measures.knowledge.aggregate import fact_to_offset, offset_quantities

N_PAIRS, N_LAYERS = 30, 4
FACT_CELLS = [(0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]  # (layer, column)
OFFSET_CELLS = [(1, 3), (2, 3), (3, 3)]  # the last column's late layers


def _stand_in(dataset: str, ld_true: dict[str, float], ld_false: dict[str, float],
              n: int = N_PAIRS) -> Any:
    """A run whose models have these mean clean logit differences (no maps)."""
    return SimpleNamespace(dataset=dataset, n=n,
                           ld_true={m: np.full(n, v) for m, v in ld_true.items()},
                           ld_false={m: np.full(n, v) for m, v in ld_false.items()})


def _synthetic_run(gap: float, offset: float) -> Any:
    """``base -> instruct`` patching: the fact adds ``gap`` at FACT_CELLS, the model difference
    adds ``offset`` at OFFSET_CELLS (the base's FALSE run carries the offset and no fact)."""
    from mechtests.data.pairs import PatchingSet
    from mechtests.measures.knowledge.runs import KnowledgeRun

    rng = np.random.default_rng(0)
    pset = PatchingSet(
        dataset="cities", true_prompts=("t",) * N_PAIRS, false_prompts=("f",) * N_PAIRS,
        widths=(4,) * N_PAIRS, diff_columns=((1, 2),) * N_PAIRS,
        columns=("The", "subject", "object", "?"), subject_columns=(1,), object_columns=(2,))
    ld_false = -0.33 + rng.normal(0.0, 0.01 * gap, N_PAIRS)

    def cells(where: list[tuple[int, int]], size: float) -> np.ndarray:
        grid = np.zeros((N_LAYERS, 4))
        for layer, column in where:
            grid[layer, column] = size
        return grid

    def patched(*parts: np.ndarray) -> np.ndarray:
        noise = rng.normal(0.0, 0.02 * gap, (N_PAIRS, N_LAYERS, 4))
        return ld_false[:, None, None] + sum(parts) + noise

    fact, model = cells(FACT_CELLS, gap), cells(OFFSET_CELLS, offset)
    return KnowledgeRun(
        dataset="cities", pset=pset, n_layers=N_LAYERS, readout=(0, 1),
        maps={("instruct", "instruct"): patched(fact), ("base", "instruct"): patched(fact, model),
              ("base:false", "instruct"): patched(model)},
        ld_true={"instruct": ld_false + gap, "base": ld_false + offset + gap},
        ld_false={"instruct": ld_false, "base": ld_false + offset},
    )


def _judged_forward_correlation(monkeypatch: pytest.MonkeyPatch, run: Any) -> Any:
    from mechtests.claims.table import load_claims
    from mechtests.claims.thresholds import load_thresholds
    from mechtests.claims.verdict import judge
    from mechtests.measures import get_measure
    from mechtests.measures.knowledge import aggregate

    get_measure("crossmodel.forward.correlation")  # load every measure module before patching:
    # a module imported under the patches would keep the stand-ins (from-imports bind at import)
    monkeypatch.setattr(aggregate, "knowledge_datasets", lambda ctx, names=None: [run.dataset])
    monkeypatch.setattr(aggregate, "knowledge_run", lambda ctx, dataset: run)
    monkeypatch.setattr(aggregate, "ensure_maps", lambda ctx, run, keys: None)
    monkeypatch.setattr(aggregate, "heatmap_figures", lambda ctx, run, pair, area: [])
    ctx = SimpleNamespace(family=SimpleNamespace(has_control=False),
                          options=SimpleNamespace(seed=0))
    claim = next(c for c in load_claims() if c.id == "crossmodel.forward.correlation")
    claim = replace(claim, params={**claim.params, "n_boot": 200})
    measurement = get_measure(claim.id)(ctx, claim, ("base", "instruct"))
    return measurement, judge(measurement, load_thresholds(None).spec(claim.id, "organism"))


def test_a_model_offset_eight_times_the_fact_gap_makes_the_forward_correlation_inconclusive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measurement, judgement = _judged_forward_correlation(
        monkeypatch, _synthetic_run(gap=0.044, offset=-0.36))
    assert measurement.details["fact_to_offset"] == pytest.approx(0.044 / 0.36, rel=1e-2)
    assert judgement.verdict is Verdict.INCONCLUSIVE
    assert "fact_to_offset 0.122 < 1" in judgement.message
    # without the rule the offset would read as a finding: the map's range is the model's
    from mechtests.claims.thresholds import load_thresholds
    from mechtests.claims.verdict import judge

    spec = load_thresholds(None).spec("crossmodel.forward.correlation", "organism")
    kept = tuple(p for p in spec.preconditions if p.quantity != "fact_to_offset")
    assert judge(measurement, replace(spec, preconditions=kept)).verdict is Verdict.FAIL


def test_a_model_offset_smaller_than_the_fact_gap_lets_the_forward_correlation_decide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measurement, judgement = _judged_forward_correlation(
        monkeypatch, _synthetic_run(gap=1.0, offset=-0.2))
    assert measurement.details["fact_to_offset"] == pytest.approx(5.0, rel=1e-2)
    assert all(check.holds for check in judgement.checks)
    assert judgement.verdict is Verdict.PASS


def test_fact_to_offset_is_the_targets_gap_over_the_difference_of_the_models_false_readouts(
) -> None:
    # Gemma-3-270M on cities, 40 pairs: gaps 0.025 (base), 0.044 (instruct); LD_F -0.69, -0.33
    run = _stand_in("cities", {"base": -0.665, "instruct": -0.286},
                    {"base": -0.69, "instruct": -0.33})
    assert fact_to_offset(run, "base", "instruct") == pytest.approx(0.044 / 0.36)
    assert fact_to_offset(run, "instruct", "base") == pytest.approx(0.025 / 0.36)


def test_the_asymmetry_reads_the_worse_of_its_two_patch_directions() -> None:
    run = _stand_in("cities", {"base": -0.665, "instruct": -0.286},
                    {"base": -0.69, "instruct": -0.33})
    both = offset_quantities([run], [run], [("base", "instruct"), ("instruct", "base")])
    assert both["fact_to_offset"] == pytest.approx(0.025 / 0.36)
    assert both["model_offset_by_dataset"] == {"cities": pytest.approx(0.36)}


def test_one_swamped_dataset_among_the_judged_ones_sets_the_quantity_and_an_unjudged_one_does_not(
) -> None:
    clear = _stand_in("cities", {"base": 5.0, "instruct": 5.5}, {"base": 0.0, "instruct": 0.5})
    swamped = _stand_in("sp_en_trans", {"base": 0.1, "instruct": 2.15},
                        {"base": 0.0, "instruct": 2.0})
    backwards = _stand_in("neg_cities", {"base": -1.0, "instruct": -1.0},
                          {"base": 0.0, "instruct": 30.0})
    runs = [clear, swamped, backwards]
    quantities = offset_quantities(runs, [clear, swamped], [("base", "instruct")])
    assert quantities["fact_to_offset_by_dataset"]["cities"] == pytest.approx(10.0)
    assert quantities["fact_to_offset"] == pytest.approx(0.15 / 2.0)
    assert set(quantities["fact_to_offset_by_dataset"]) == {"cities", "sp_en_trans",
                                                            "neg_cities"}


def test_two_models_that_read_out_alike_have_an_unbounded_ratio_unless_the_fact_is_backwards(
) -> None:
    same = _stand_in("cities", {"base": 1.0, "instruct": 1.0}, {"base": 0.0, "instruct": 0.0})
    backwards = _stand_in("cities", {"base": -1.0, "instruct": -1.0},
                          {"base": 0.0, "instruct": 0.0})
    assert fact_to_offset(same, "base", "instruct") == float("inf")
    assert fact_to_offset(backwards, "base", "instruct") == float("-inf")


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize(("ratio", "split_holds"), [(1.1, True), (2.0, True), (0.9, False),
                                                   (0.5, False)])
def test_above_a_ratio_of_one_the_normalised_map_splits_cells_by_the_fact_for_either_offset_sign(
    sign: float, ratio: float, split_holds: bool,
) -> None:
    """Cells ``f * gap + m * offset`` for every mix of the whole fact (f) and the whole model
    difference (m): N() keeps the fact's cells hot and the others cold exactly when the gap
    exceeds the offset."""
    from mechtests.methods.heatmaps import normalize

    gap = 1.0
    offset = sign * gap / ratio
    cells = np.array([[f * gap + m * offset for m in (0, 1)] for f in (0, 1)])  # [f, m]
    hot = normalize(cells) > 0
    assert bool(hot[1].all() and not hot[0].any()) is split_holds


@pytest.mark.parametrize("claim_id", ["crossmodel.forward.recovery", "crossmodel.asymmetry"])
def test_claims_judged_against_a_null_that_carries_the_offset_are_not_gated_by_it(
    claim_id: str,
) -> None:
    from mechtests.claims.thresholds import load_thresholds

    spec = load_thresholds(None).spec(claim_id, "organism")
    quantities = {p.quantity for p in spec.preconditions}
    assert "fact_to_offset" not in quantities
    assert {"datasets_decidable", "min_pairs"} <= quantities
