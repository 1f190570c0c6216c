from __future__ import annotations

import pytest

from mechtests.claims.model import (
    ControlRule,
    Measurement,
    Precondition,
    ThresholdSpec,
    Verdict,
)
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
    result = judge(Measurement(0.9, 0.1, "ctl", interval=(0.82, 0.95)), HIGH)
    assert result.verdict is Verdict.PASS
    assert result.bound == pytest.approx(0.82)
    assert judge(Measurement(0.6, 0.1, "ctl", interval=(0.5, 0.7)), HIGH).verdict is Verdict.FAIL


def test_the_interval_upper_bound_must_clear_an_upper_threshold() -> None:
    assert judge(Measurement(0.6, 0.9, "ctl", interval=(0.55, 0.7)), LOW).verdict is Verdict.FAIL
    assert judge(Measurement(0.3, 0.9, "ctl", interval=(0.2, 0.45)), LOW).verdict is Verdict.PASS


@pytest.mark.parametrize("metric", [0.85, 0.78])  # point estimate on either side of 0.8
def test_an_interval_that_contains_the_threshold_is_inconclusive_with_half_width_and_distance(
    metric: float,
) -> None:
    result = judge(Measurement(metric, 0.1, "ctl", interval=(0.7, 0.9)), HIGH)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "interval [0.7, 0.9] contains the threshold 0.8" in result.message
    distance = abs(metric - 0.8)
    assert f"half-width 0.1 > distance {distance:.3g}" in result.message
    assert f"(about {(0.1 / distance) ** 2:.2g}x the sample would decide)" in result.message
    assert result.power is not None
    assert not result.power.decided
    assert result.power.half_width == pytest.approx(0.1)


def test_an_upper_threshold_inside_the_interval_is_inconclusive_too() -> None:
    result = judge(Measurement(0.3, 0.9, "ctl", interval=(0.2, 0.6)), LOW)
    assert result.verdict is Verdict.INCONCLUSIVE


def test_a_decided_interval_reports_its_half_width_beside_the_distance() -> None:
    result = judge(Measurement(0.95, 0.1, "ctl", interval=(0.9, 1.0)), HIGH)
    assert result.verdict is Verdict.PASS
    assert "(half-width 0.05, distance 0.15)" in result.message
    assert result.power is not None
    assert result.power.decided


def test_a_failed_control_decides_when_the_interval_cannot_reach_the_control_margin() -> None:
    result = judge(Measurement(0.82, 0.7, "ctl", interval=(0.7, 0.9)), HIGH)
    assert result.verdict is Verdict.FAIL


def test_a_missed_control_margin_is_inconclusive_when_the_interval_reaches_it() -> None:
    result = judge(Measurement(0.82, 0.7, "ctl", interval=(0.6, 1.2)), HIGH)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "not decided" in result.message


def test_a_missed_control_margin_on_a_lower_is_better_claim_follows_the_same_rule() -> None:
    low = ThresholdSpec("x.y.low", "<=", 0.5, ControlRule(0.3), "test")
    assert judge(Measurement(0.4, 0.6, "ctl", interval=(0.35, 0.45)), low).verdict \
        is Verdict.FAIL
    assert judge(Measurement(0.4, 0.6, "ctl", interval=(0.1, 0.7)), low).verdict \
        is Verdict.INCONCLUSIVE


OWN = Precondition("own_ie", ">=", 0.1, "own-vector steering works", "test")


def _with(*pre: Precondition) -> ThresholdSpec:
    return ThresholdSpec("x.y.z", ">=", 0.8, ControlRule(0.3), "test", preconditions=pre)


@pytest.mark.parametrize("metric", [0.95, 0.1])  # would PASS / would FAIL
def test_a_failed_precondition_is_inconclusive_with_its_reason_and_number(metric: float) -> None:
    result = judge(Measurement(metric, 0.0, "ctl", details={"own_ie": -0.019}), _with(OWN))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.message == "precondition failed: own-vector steering works: own_ie -0.019 < 0.1"
    assert [c.holds for c in result.checks] == [False]


def test_a_holding_precondition_lets_the_metric_decide() -> None:
    result = judge(Measurement(0.95, 0.0, "ctl", details={"own_ie": 0.9}), _with(OWN))
    assert result.verdict is Verdict.PASS
    assert result.checks[0].measured == pytest.approx(0.9)


def test_a_nan_precondition_quantity_does_not_hold() -> None:
    result = judge(Measurement(0.95, 0.0, "ctl", details={"own_ie": float("nan")}), _with(OWN))
    assert result.verdict is Verdict.INCONCLUSIVE


def test_an_infinite_precondition_quantity_compares_like_a_number() -> None:
    # fact_to_offset of a post model identical to its base: a gap over a zero offset
    big = judge(Measurement(0.95, 0.0, "ctl", details={"own_ie": float("inf")}), _with(OWN))
    assert big.verdict is Verdict.PASS
    low = Precondition("own_ie", "<=", 0.1, "small enough", "test")
    assert judge(Measurement(0.95, 0.0, "ctl", details={"own_ie": float("inf")}),
                 _with(low)).verdict is Verdict.INCONCLUSIVE


def test_a_failed_precondition_wins_over_an_undefined_metric() -> None:
    result = judge(Measurement(float("nan"), 0.0, "ctl", details={"own_ie": 0.0}), _with(OWN))
    assert result.verdict is Verdict.INCONCLUSIVE


def test_a_precondition_quantity_the_measure_does_not_report_is_an_error() -> None:
    result = judge(Measurement(0.95, 0.0, "ctl"), _with(OWN))
    assert result.verdict is Verdict.ERROR
    assert "'own_ie'" in result.message


def test_a_measurement_caveat_is_part_of_the_reason() -> None:
    why = "neg_cities not judged: base rates FALSE statements above TRUE ones"
    result = judge(Measurement(0.95, 0.0, "ctl", details={"caveat": why}), HIGH)
    assert result.verdict is Verdict.PASS
    assert result.message.endswith(why)


def test_a_missing_control_is_an_error_not_a_pass() -> None:
    assert judge(Measurement(0.9, None, "none"), HIGH).verdict is Verdict.ERROR


def test_a_nan_metric_is_an_error() -> None:
    assert judge(Measurement(float("nan"), 0.0, "ctl"), HIGH).verdict is Verdict.ERROR


def test_an_undefined_metric_is_an_error_that_gives_the_measurement_s_reason() -> None:
    why = "base refuses none of the harmful test prompts: nothing to ablate"
    result = judge(Measurement(float("nan"), 0.1, "ctl", details={"note": why}), HIGH)
    assert result.verdict is Verdict.ERROR
    assert result.message == f"metric is NaN: {why}"


def test_an_interval_bound_off_the_threshold_by_float_rounding_sits_on_it() -> None:
    # maxdiff bins of 0.1: a bootstrap bound of 0.1 + 0.2 is the threshold 0.3, not above it
    spec = ThresholdSpec("x.y.z", "<=", 0.3, ControlRule(0.1), "test")
    result = judge(Measurement(0.6, 1.0, "ctl", interval=(0.1 + 0.2, 0.9)), spec)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "contains the threshold 0.3" in result.message
    assert judge(Measurement(0.6, 1.0, "ctl", interval=(0.31, 0.9)), spec).verdict \
        is Verdict.FAIL


def test_a_bound_or_a_control_gap_equal_to_its_threshold_up_to_rounding_meets_it() -> None:
    spec = ThresholdSpec("x.y.z", ">=", 0.3, ControlRule(0.1), "test")
    # 0.7 - 0.4 (just below 0.3 in floats) against 0.3; a gap 0.7 - 0.6 against the margin 0.1
    assert judge(Measurement(0.7 - 0.4, 0.1, "ctl"), spec).verdict is Verdict.PASS
    assert judge(Measurement(0.7, 0.6, "ctl"), spec).verdict is Verdict.PASS
    assert judge(Measurement(0.3 - 1e-6, 0.0, "ctl"), spec).verdict is Verdict.FAIL


def test_a_strict_claim_fails_on_its_bound_where_an_inclusive_one_passes() -> None:
    strict = ThresholdSpec("x.y.z", ">", 0.0, ControlRule(0.1), "test")
    inclusive = ThresholdSpec("x.y.z", ">=", 0.0, ControlRule(0.1), "test")
    # a post model identical to its base: both cosines 1, the gap 0 up to rounding
    on_bound = Measurement(0.0, -0.168, "ctl", interval=(-4.4e-16, 2.2e-16))
    result = judge(on_bound, strict)
    assert result.verdict is Verdict.FAIL
    assert "CI bound -4.4e-16 <= 0" in result.message
    assert judge(on_bound, inclusive).verdict is Verdict.PASS
    assert judge(Measurement(0.2, -0.168, "ctl", interval=(0.1, 0.3)), strict).verdict \
        is Verdict.PASS
    assert judge(Measurement(0.05, -0.168, "ctl", interval=(-0.1, 0.2)), strict).verdict \
        is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(("op", "x", "holds"), [
    (">=", 0.3 - 1e-12, True), (">", 0.3 + 1e-12, False), (">", 0.31, True),
    ("<=", 0.3 + 1e-12, True), ("<", 0.3 - 1e-12, False), ("<", 0.29, True)])
def test_comparisons_count_a_rounding_error_as_on_the_bound(op: str, x: float,
                                                            holds: bool) -> None:
    from mechtests.claims.model import meets

    assert meets(x, op, 0.3) is holds
