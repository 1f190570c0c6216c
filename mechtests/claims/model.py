"""The claim table's types: what a claim is, what a measurement returns, how it is judged.

A claim never computes. Its id names the function registered for it by an area package
(:mod:`mechtests.measures`), which returns a :class:`Measurement`: the metric, the same metric on a
control (an independent base, a random direction, a shuffled heatmap) and, where sampling
matters, a bootstrap interval. Its ``details`` also carry the numbers the claim's
:class:`Precondition` s read (thresholds.yaml ``preconditions``): what must hold for the
experiment to decide the claim at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# Comparison operators of thresholds and preconditions: ">=" / "<=" inclusive, ">" / "<"
# strict (a claim that a gap is positive fails at exactly 0).
OPS = (">=", "<=", ">", "<")
_NEGATED = {">=": "<", "<=": ">", ">": "<=", "<": ">="}
# Values this close to a bound (relative; absolute for bounds below 1) sit on it: a sum of
# bootstrap bins such as 0.1 + 0.2 = 0.30000000000000004 must not decide a verdict.
TIE = 1e-9


def higher_is_better(op: str) -> bool:
    """Whether ``op`` asks for values above its bound (``>=``, ``>``)."""
    return op in (">=", ">")


def negated(op: str) -> str:
    """The operator that holds where ``op`` does not (``>=`` -> ``<``)."""
    return _NEGATED[op]


def meets(x: float, op: str, bound: float) -> bool:
    """``x op bound``, a value within :data:`TIE` of the bound counting as on it: met by the
    inclusive operators, missed by the strict ones."""
    slack = TIE * max(1.0, abs(bound)) if math.isfinite(bound) else 0.0
    if op == ">=":
        return x >= bound - slack
    if op == "<=":
        return x <= bound + slack
    if op == ">":
        return x > bound + slack
    if op == "<":
        return x < bound - slack
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


class Verdict(str, Enum):
    """The outcome of one claim on one family and model pair."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    ERROR = "ERROR"
    INFO = "INFO"  # random-weight family (tiny, real-shape timing runs): numbers, no verdict
    # the experiment could not decide: a precondition failed, or the interval contains the
    # threshold (neither PASS nor FAIL is supported by the data)
    INCONCLUSIVE = "INCONCLUSIVE"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Claim:
    """One testable statement of the paper, as data."""

    id: str  # dotted, stable, lower-snake: area.subject.property
    area: str  # knowledge | crossmodel | truth | refusal | confidence
    statement: str  # one sentence a reader can check against the paper
    paper: str  # where it comes from (docs/claims.md section, paper claim number)
    metric: str  # name of the measured quantity
    control: str  # what the control is, in words
    pairs: tuple[tuple[str, str], ...] = (("base", "sft"), ("base", "instruct"))
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    """A plot of a measurement, drawn after the measure by the report's plotter for ``kind``
    (:func:`mechtests.report.plots.draw`): the file it writes and the numbers it shows."""

    kind: str  # a key of mechtests.report.plots.PLOTTERS
    path: str
    data: Mapping[str, Any]  # the plotter's arguments other than ``path`` (plain numbers)


@dataclass(frozen=True)
class Measurement:
    """What a measure function returns for one (family, pair, claim)."""

    metric: float
    control: float | None
    control_label: str
    interval: tuple[float, float] | None = None  # e.g. 95% bootstrap interval of ``metric``
    n: int | None = None  # examples the metric is computed on
    details: Mapping[str, Any] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()  # paths of files the measure wrote itself for this claim
    figures: tuple[Figure, ...] = ()  # plots drawn after the measure (one file each)


@dataclass(frozen=True)
class ControlRule:
    """``metric`` must beat ``control`` by ``margin`` in the claim's direction."""

    margin: float


@dataclass(frozen=True)
class Precondition:
    """What must hold before a claim's metric is read: ``details[quantity] op value``."""

    quantity: str  # a key of Measurement.details (a number)
    op: str  # one of OPS
    value: float
    why: str  # what the check protects, in words ("own-vector steering works")
    source: str  # where the floor comes from (paper section, or "ours: <reason>")


@dataclass(frozen=True)
class PreconditionCheck:
    """One precondition evaluated on one measurement (``measured`` is NaN when missing)."""

    precondition: Precondition
    measured: float
    holds: bool

    def describe(self) -> str:
        p = self.precondition
        sym = p.op if self.holds else negated(p.op)
        return f"{p.why}: {p.quantity} {self.measured:.3g} {sym} {p.value:.3g}"


@dataclass(frozen=True)
class Power:
    """How well an interval resolves the threshold: half-width vs distance of the point
    estimate to the threshold. ``decided`` is false when the interval contains the threshold."""

    half_width: float
    distance: float
    decided: bool


@dataclass(frozen=True)
class ThresholdSpec:
    """A claim's pass rule on one family, with its provenance."""

    claim_id: str
    op: str  # one of OPS
    value: float
    control: ControlRule | None
    source: str
    note: str = ""
    uses_interval: bool = True
    tolerance: float | str | None = None  # baseline drift; None: mechtests.report.baseline default
    preconditions: tuple[Precondition, ...] = ()


@dataclass(frozen=True)
class Judgement:
    """The verdict and the one-line reason a reader sees."""

    verdict: Verdict
    message: str
    bound: float  # the number compared with the threshold (interval bound or metric)
    checks: tuple[PreconditionCheck, ...] = ()
    power: Power | None = None  # set when an interval was judged
