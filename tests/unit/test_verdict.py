from __future__ import annotations

import pytest

from mechtests.claims.model import ControlRule, Measurement, ThresholdSpec, Verdict
from mechtests.claims.verdict import judge

HIGH = ThresholdSpec("x.y.z", ">=", 0.8, ControlRule(0.3), "test")
LOW = ThresholdSpec("x.y.z", "<=", 0.5, ControlRule(0.2), "test")


def test_a_metric_above_threshold_and_control_passes() -> None:
    assert judge(Measurement(0.9, 0.1, "ctl"), HIGH).verdict is Verdict.PASS


def test_a_metric_that_does_not_beat_its_control_fails_even_above_threshold() -> None:
    result = judge(Measurement(0.9, 0.85, "control base"), HIGH)
    assert result.verdict is Verdict.FAIL
    assert "control base" in result.message


def test_the_interval_lower_bound_must_clear_a_lower_threshold() -> None:
    result = judge(Measurement(0.9, 0.1, "ctl", interval=(0.7, 0.95)), HIGH)
    assert result.verdict is Verdict.FAIL
    assert result.bound == pytest.approx(0.7)


def test_the_interval_upper_bound_must_clear_an_upper_threshold() -> None:
    assert judge(Measurement(0.3, 0.9, "ctl", interval=(0.2, 0.6)), LOW).verdict is Verdict.FAIL
    assert judge(Measurement(0.3, 0.9, "ctl", interval=(0.2, 0.45)), LOW).verdict is Verdict.PASS


def test_a_missing_control_is_an_error_not_a_pass() -> None:
    assert judge(Measurement(0.9, None, "none"), HIGH).verdict is Verdict.ERROR


def test_a_nan_metric_is_an_error() -> None:
    assert judge(Measurement(float("nan"), 0.0, "ctl"), HIGH).verdict is Verdict.ERROR


def test_an_undefined_metric_is_an_error_that_gives_the_measurement_s_reason() -> None:
    why = "base refuses none of the harmful test prompts: nothing to ablate"
    result = judge(Measurement(float("nan"), 0.1, "ctl", details={"note": why}), HIGH)
    assert result.verdict is Verdict.ERROR
    assert result.message == f"metric is NaN: {why}"
