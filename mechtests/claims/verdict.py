"""Judge a measurement against its preconditions, its threshold and its control.

The verdict, in this order:
    * ERROR when a precondition's quantity is missing from ``Measurement.details`` (the measure
      does not report what the claim needs) or the metric is NaN;
    * INCONCLUSIVE when a precondition fails (``thresholds.yaml: preconditions``: the
      experiment had no power to decide, e.g. the model's own steering vector does not steer
      it); the reason names the check and the measured number;
    * FAIL when the metric does not beat its control by ``control_margin`` in the claim's
      direction (a point comparison), unless its interval still reaches both the threshold and
      the control plus its margin: then the sample cannot tell, and the cell is INCONCLUSIVE;
    * with an interval (and ``uses_interval``): PASS when the judged bound (lower for ``>=``,
      upper for ``<=``) clears the threshold, FAIL when the other bound misses it too (the whole
      interval is on the failing side), INCONCLUSIVE when the interval contains the threshold
      (the sample cannot tell the two apart); the reason gives the interval's half-width beside
      the distance from the point estimate to the threshold;
    * without one: PASS or FAIL on the point estimate.

A measurement's ``details["caveat"]`` (e.g. a dataset left out of a worst-dataset judgement
because it cannot decide the claim) is appended to the reason.

Example:
    >>> spec = ThresholdSpec("truth.direction.cosine", ">=", 0.8, ControlRule(0.3), "paper")
    >>> judge(Measurement(0.9, 0.1, "control base"), spec).verdict
    <Verdict.PASS: 'PASS'>
    >>> judge(Measurement(0.82, 0.1, "control base", interval=(0.7, 0.9)), spec).verdict
    <Verdict.INCONCLUSIVE: 'INCONCLUSIVE'>
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from mechtests.claims.model import (
    ControlRule,
    Judgement,
    Measurement,
    Power,
    Precondition,
    PreconditionCheck,
    ThresholdSpec,
    Verdict,
    higher_is_better,
    meets,
    negated,
)

__all__ = ["ControlRule", "check_preconditions", "judge", "power_of"]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_preconditions(measurement: Measurement, preconditions: Iterable[Precondition]
                        ) -> tuple[PreconditionCheck, ...]:
    """Each precondition on ``measurement.details``; a NaN quantity does not hold, an infinite
    one compares as it is (a ratio over a zero offset is infinitely large). Raises
    KeyError naming the quantity when the measure did not report it."""
    checks = []
    for pre in preconditions:
        if pre.quantity not in measurement.details:
            raise KeyError(pre.quantity)
        value = _number(measurement.details[pre.quantity])
        measured = float("nan") if value is None else value
        # an infinite ratio compares like any number
        holds = not math.isnan(measured) and meets(measured, pre.op, pre.value)
        checks.append(PreconditionCheck(pre, measured, holds))
    return tuple(checks)


def power_of(metric: float, interval: tuple[float, float], op: str, threshold: float) -> Power:
    """Half-width of ``interval``, distance of ``metric`` to ``threshold``, and whether the
    interval lies wholly on one side of the threshold (``decided``)."""
    lo, hi = interval
    half = (hi - lo) / 2.0
    distance = abs(metric - threshold)
    judged, far = (lo, hi) if higher_is_better(op) else (hi, lo)
    # decided: the judged bound meets the threshold, or the far bound misses it
    decided = meets(judged, op, threshold) or not meets(far, op, threshold)
    return Power(half, distance, decided)


def _sample_hint(power: Power) -> str:
    """How much more data would let the interval decide, if its half-width shrinks as
    ``1/sqrt(n)`` around the same point estimate: ``(half-width / distance)^2``."""
    if power.distance <= 0 or not math.isfinite(power.half_width):
        return " (the point estimate sits on the threshold)"
    factor = (power.half_width / power.distance) ** 2
    return f" (about {factor:.2g}x the sample would decide)" if factor > 1 else ""


def judge(measurement: Measurement, spec: ThresholdSpec) -> Judgement:
    """The verdict for ``measurement`` under ``spec`` and a one-line reason."""
    try:
        checks = check_preconditions(measurement, spec.preconditions)
    except KeyError as exc:
        return Judgement(Verdict.ERROR, f"the measure did not report the precondition quantity "
                         f"{exc.args[0]!r} (thresholds.yaml: {spec.claim_id}.preconditions)",
                         float("nan"))
    failed = [c for c in checks if not c.holds]
    if failed:
        reason = "; ".join(c.describe() for c in failed)
        return Judgement(Verdict.INCONCLUSIVE, f"precondition failed: {reason}",
                         float("nan"), checks)
    metric = measurement.metric
    if metric is None or math.isnan(metric):
        note = measurement.details.get("note")
        reason = f"metric is NaN: {note}" if note else "metric is NaN"
        return Judgement(Verdict.ERROR, reason, float("nan"), checks)
    geq = higher_is_better(spec.op)
    bound = metric
    from_interval = spec.uses_interval and measurement.interval is not None
    power: Power | None = None
    if from_interval:
        assert measurement.interval is not None
        lo, hi = (float(x) for x in measurement.interval)
        bound = lo if geq else hi
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return Judgement(Verdict.INCONCLUSIVE, f"the interval [{_fmt(lo)}, {_fmt(hi)}] is "
                             "undefined (a resample without a value)", bound, checks)
        power = power_of(metric, (lo, hi), spec.op, spec.value)
    threshold_ok = meets(bound, spec.op, spec.value)
    symbol = spec.op if threshold_ok else negated(spec.op)
    what = "CI bound" if from_interval else "metric"
    reasons = [f"{what} {_fmt(bound)} {symbol} {_fmt(spec.value)}"]
    if power is not None:
        reasons[0] += f" (half-width {_fmt(power.half_width)}, distance {_fmt(power.distance)})"
    control_ok = True
    if spec.control is not None:
        if measurement.control is None or math.isnan(measurement.control):
            return Judgement(
                Verdict.ERROR,
                "threshold needs a control but the measure returned none "
                f"({measurement.control_label})",
                bound, checks, power,
            )
        gap = metric - measurement.control if geq else measurement.control - metric
        control_ok = meets(gap, ">=", spec.control.margin)
        reasons.append(
            f"beats {measurement.control_label} ({_fmt(measurement.control)}) by {_fmt(gap)}"
            f" {'>=' if control_ok else '<'} {_fmt(spec.control.margin)}"
        )
    caveat = measurement.details.get("caveat")
    if isinstance(caveat, str) and caveat:
        reasons.append(caveat)  # e.g. a dataset left out because it cannot decide the claim
    if not control_ok and from_interval and measurement.control is not None \
            and spec.control is not None:
        if geq:  # lo, hi: the interval read above
            needed = max(spec.value, measurement.control + spec.control.margin)
            best, side = hi, ">="
        else:
            needed = min(spec.value, measurement.control - spec.control.margin)
            best, side = lo, "<="
        # the point misses the control's margin; the interval's far end clears it and the
        # (maybe strict) threshold
        if meets(best, side, needed) and meets(best, spec.op, spec.value):
            reasons[0] = (f"interval [{_fmt(lo)}, {_fmt(hi)}] reaches {_fmt(best)} {side} "
                          f"{_fmt(needed)} (the threshold and the control's margin), so the "
                          "missed control margin is not decided")
            return Judgement(Verdict.INCONCLUSIVE, "; ".join(reasons), bound, checks, power)
    if control_ok and power is not None and not power.decided:
        assert measurement.interval is not None
        lo, hi = measurement.interval
        sym = ">" if power.half_width > power.distance else "<="
        reasons[0] = (f"interval [{_fmt(lo)}, {_fmt(hi)}] contains the threshold "
                      f"{_fmt(spec.value)}: half-width {_fmt(power.half_width)} {sym} distance "
                      f"{_fmt(power.distance)}{_sample_hint(power)}")
        return Judgement(Verdict.INCONCLUSIVE, "; ".join(reasons), bound, checks, power)
    verdict = Verdict.PASS if threshold_ok and control_ok else Verdict.FAIL
    return Judgement(verdict, "; ".join(reasons), bound, checks, power)
