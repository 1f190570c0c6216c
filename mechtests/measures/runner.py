"""Run one claim on one family and model pair: measure, judge, and build the record.

This is the only place where a claim meets a measure function; the pytest plugin calls
:meth:`ClaimRunner.run` and records what comes back, without doing any arithmetic itself.
:func:`run_measure` (also what ``mechtests bench`` times) draws the figures a measurement asks
for after the measure, through the report's plot hook, so no measure imports a plotter.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mechtests.checkpoints.cards import find_card
from mechtests.claims.model import Claim, Judgement, Measurement, ThresholdSpec, Verdict
from mechtests.claims.thresholds import Thresholds
from mechtests.claims.verdict import judge
from mechtests.families import Family
from mechtests.measures.context import FamilyContext, RunOptions


@dataclass(frozen=True)
class ClaimCase:
    """One parametrized claim test: a claim on a family for a model pair."""

    family: str
    pair: tuple[str, str]
    claim: Claim

    @property
    def test_id(self) -> str:
        return f"{self.family}-{self.pair[0]}_{self.pair[1]}-{self.claim.id}"


@dataclass
class ClaimRecord:
    """Everything the claim matrix shows for one case (JSON-able)."""

    claim_id: str
    area: str
    family: str
    pair: list[str]
    statement: str
    paper: str
    metric_name: str
    verdict: str
    message: str
    metric: float | None = None
    control: float | None = None
    control_label: str = ""
    interval: list[float] | None = None
    n: int | None = None
    op: str = ""
    threshold: float | None = None
    control_margin: float | None = None
    source: str = ""
    note: str = ""
    expected_failure: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    model_cards: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # thresholds.yaml preconditions as checked: quantity, measured, op, value, holds, why, source
    preconditions: list[dict[str, Any]] = field(default_factory=list)
    power: dict[str, Any] | None = None  # interval half-width, distance to threshold, decided
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ClaimRunner:
    """Holds one :class:`FamilyContext` per family for the life of a process."""

    def __init__(
        self, families: dict[str, Family], thresholds: Thresholds, options: RunOptions
    ) -> None:
        self.families = families
        self.thresholds = thresholds
        self.options = options
        self._contexts: dict[str, FamilyContext] = {}

    def context(self, family: str) -> FamilyContext:
        if family not in self._contexts:
            for other in self._contexts.values():
                other.release()  # one model in memory per process
            self._contexts[family] = FamilyContext(self.families[family], self.options)
        return self._contexts[family]

    def close(self) -> None:
        for ctx in self._contexts.values():
            ctx.release()

    def base_record(self, case: ClaimCase, spec: ThresholdSpec | None) -> ClaimRecord:
        claim = case.claim
        return ClaimRecord(
            claim_id=claim.id,
            area=claim.area,
            family=case.family,
            pair=list(case.pair),
            statement=claim.statement,
            paper=claim.paper,
            metric_name=claim.metric,
            verdict=Verdict.ERROR.value,
            message="",
            control_label=claim.control,
            op=spec.op if spec else "",
            threshold=spec.value if spec else None,
            control_margin=spec.control.margin if spec and spec.control else None,
            source=spec.source if spec else "",
            note=spec.note if spec else "",
            expected_failure=self.thresholds.expected_failure(claim.id, case.family),
        )

    def run(self, case: ClaimCase) -> tuple[ClaimRecord, Judgement]:
        """Measure and judge ``case``; exceptions propagate to the caller after nothing."""
        spec = self.thresholds.spec(case.claim.id, case.family)
        record = self.base_record(case, spec)
        ctx = self.context(case.family)
        start = time.perf_counter()
        measurement = run_measure(ctx, case.claim, case.pair)
        record.seconds = round(time.perf_counter() - start, 3)
        judgement = judge(measurement, spec)
        if ctx.family.random_weights:
            judgement = Judgement(
                Verdict.INFO,
                f"random weights: no verdict (would be {judgement.verdict}: {judgement.message})",
                judgement.bound,
            )
        record.verdict = judgement.verdict.value
        record.message = judgement.message
        record.preconditions = [
            {"quantity": c.precondition.quantity, "measured": c.measured,
             "op": c.precondition.op, "value": c.precondition.value, "holds": c.holds,
             "why": c.precondition.why, "source": c.precondition.source}
            for c in judgement.checks
        ]
        if judgement.power is not None:
            record.power = {"half_width": judgement.power.half_width,
                            "distance": judgement.power.distance,
                            "decided": judgement.power.decided}
        record.metric = float(measurement.metric)
        record.control = None if measurement.control is None else float(measurement.control)
        record.control_label = measurement.control_label
        record.interval = list(measurement.interval) if measurement.interval else None
        record.n = measurement.n
        record.details = _jsonable(dict(measurement.details))
        drawn = (figure.path for figure in measurement.figures)
        record.artifacts = [_relative(a, self.options.report_dir)
                            for a in dict.fromkeys((*measurement.artifacts, *drawn))]
        record.checkpoints = {role: ctx.fingerprint(role)[:16] for role in case.pair}
        cards = (find_card(ctx.checkpoint_dir(role)) for role in case.pair)
        record.model_cards = sorted({str(card) for card in cards if card is not None})
        return record, judgement


def run_measure(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """``claim``'s measure on ``pair``, then the figures it asks for drawn (each file once per
    context) by the report's plot hook, :func:`mechtests.report.plots.draw`."""
    from mechtests.measures import get_measure
    from mechtests.report.plots import draw

    measurement = get_measure(claim.id)(ctx, claim, pair)
    for figure in measurement.figures:
        ctx.memo(f"figure:{figure.path}", functools.partial(draw, figure))
    return measurement


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)
