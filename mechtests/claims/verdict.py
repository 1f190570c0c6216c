"""Judge a measurement against its threshold and its control.

A claim passes only when both hold:
    * the threshold: the interval's bound (lower for ``>=``, upper for ``<=``; the point estimate
      when there is no interval or ``uses_interval`` is false) clears ``value``;
    * the control: the metric beats the control by ``control_margin`` in the claim's direction.

Example:
    >>> spec = ThresholdSpec("truth.direction.cosine", ">=", 0.8, ControlRule(0.3), "paper")
    >>> judge(Measurement(0.9, 0.1, "control base"), spec).verdict
    <Verdict.PASS: 'PASS'>
"""

from __future__ import annotations

import math

from mechtests.claims.model import ControlRule, Judgement, Measurement, ThresholdSpec, Verdict

__all__ = ["ControlRule", "judge"]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def judge(measurement: Measurement, spec: ThresholdSpec) -> Judgement:
    """The verdict for ``measurement`` under ``spec`` and a one-line reason."""
    metric = measurement.metric
    if metric is None or math.isnan(metric):
        note = measurement.details.get("note")
        reason = f"metric is NaN: {note}" if note else "metric is NaN"
        return Judgement(Verdict.ERROR, reason, float("nan"))
    geq = spec.op == ">="
    bound = metric
    from_interval = spec.uses_interval and measurement.interval is not None
    if from_interval:
        assert measurement.interval is not None
        bound = measurement.interval[0] if geq else measurement.interval[1]
    threshold_ok = bound >= spec.value if geq else bound <= spec.value
    symbol = (">=" if threshold_ok else "<") if geq else ("<=" if threshold_ok else ">")
    what = "CI bound" if from_interval else "metric"
    reasons = [f"{what} {_fmt(bound)} {symbol} {_fmt(spec.value)}"]
    control_ok = True
    if spec.control is not None:
        if measurement.control is None or math.isnan(measurement.control):
            return Judgement(
                Verdict.ERROR,
                "threshold needs a control but the measure returned none "
                f"({measurement.control_label})",
                bound,
            )
        gap = metric - measurement.control if geq else measurement.control - metric
        control_ok = gap >= spec.control.margin
        reasons.append(
            f"beats {measurement.control_label} ({_fmt(measurement.control)}) by {_fmt(gap)}"
            f" {'>=' if control_ok else '<'} {_fmt(spec.control.margin)}"
        )
    verdict = Verdict.PASS if threshold_ok and control_ok else Verdict.FAIL
    return Judgement(verdict, "; ".join(reasons), bound)
