"""Which knowledge datasets can decide a claim: a model that rates FALSE above TRUE cannot."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mechtests.measures.knowledge.aggregate import split_decidable


def _run(dataset: str, gaps: dict[str, float], n: int = 30) -> Any:
    """A stand-in run whose models have mean LD_T - LD_F = ``gaps[model]``."""
    return SimpleNamespace(
        dataset=dataset, n=n,
        ld_true={m: np.full(n, g) for m, g in gaps.items()},
        ld_false={m: np.zeros(n) for m in gaps},
    )


def test_a_dataset_a_model_gets_backwards_is_left_out_and_named() -> None:
    runs = [_run("cities", {"base": 5.5, "instruct": 9.4}),
            _run("neg_cities", {"base": -1.1, "instruct": -1.85}, n=156)]
    kept, excluded, quantities = split_decidable(runs, ["base", "instruct"])
    assert [r.dataset for r in kept] == ["cities"]
    assert set(excluded) == {"neg_cities"}
    assert "instruct rates FALSE statements above TRUE ones" in excluded["neg_cities"]
    assert "-1.85" in excluded["neg_cities"]
    assert quantities["datasets_decidable"] == 1
    assert quantities["ld_gap"] == pytest.approx(5.5)
    assert quantities["min_pairs"] == 30


def test_no_decidable_dataset_reports_zero_and_the_gaps_of_all() -> None:
    runs = [_run("neg_cities", {"base": -1.1, "control": 0.0})]
    kept, excluded, quantities = split_decidable(runs, ["base", "control"])
    assert kept == []
    assert set(excluded) == {"neg_cities"}
    assert quantities["datasets_decidable"] == 0
    assert quantities["ld_gap"] == pytest.approx(-1.1)
