"""Baselines: compare every metric of this run with a stored run (release gating).

A claim's verdict says whether the paper's claim holds; a baseline says whether the numbers
moved since the last accepted run (e.g. the last released instruct checkpoint). The two are
separate verdicts: the matrix shows ``drift`` beside the claim's own verdict.

* ``--baseline FILE``: after the run, each result's ``metric`` and ``control`` are compared with
  the same (claim, family, model pair) in FILE. A change beyond the claim's ``tolerance``
  (thresholds.yaml, per family overridable) is a **drift** and fails the run with a message that
  names the claim, the old and new values and the tolerance. A result FILE does not have is
  **new** and fails too, so new numbers never pass silently. Results of FILE that this run did
  not produce (deselected with ``-k``, another family) are listed, not failed.
* FILE missing: it is written from this run and the run **fails** (review, commit, rerun).
* ``--update-baseline``: (re)write FILE from this run; nothing is compared, nothing fails.

Tolerance: a number is an absolute tolerance on ``|new - old|``; a string ``"N%"`` is relative
to ``|old|``. Default :data:`DEFAULT_TOLERANCE` (0.05 absolute: most metrics are cosines,
fractions or accuracies in [0, 1], where 0.05 is a change a reviewer should see). Not compared:
intervals (bootstrap noise is already in the claim's verdict) and results without a metric
(SKIP/ERROR; the verdict column shows them). A verdict that turns INCONCLUSIVE, or stops being
INCONCLUSIVE, is a drift of its own (``verdict PASS -> INCONCLUSIVE``), also within tolerance.

Example:
    >>> Tolerance.parse("5%").allows(old=2.0, new=2.09), Tolerance.parse(0.05).allows(0.9, 0.96)
    (True, False)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "DEFAULT_TOLERANCE",
    "BaselineGate",
    "Drift",
    "Tolerance",
    "compare",
    "load_baseline",
    "result_key",
    "write_baseline",
]

DEFAULT_TOLERANCE = 0.05
FORMAT_VERSION = 1
COMPARED = ("metric", "control")
INCONCLUSIVE = "INCONCLUSIVE"  # = mechtests.claims.model.Verdict.INCONCLUSIVE
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*%\s*$")

Record = MutableMapping[str, Any]


class BaselineError(Exception):
    """A baseline file that cannot be read (not JSON, wrong format)."""


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move from its baseline value."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, raw: float | str | None) -> Tolerance:
        """``0.05`` (absolute), ``"5%"`` (relative to the baseline value) or None (default)."""
        if raw is None:
            return cls(DEFAULT_TOLERANCE)
        if isinstance(raw, str):
            match = _PERCENT.match(raw)
            if not match:
                raise ValueError(f"tolerance {raw!r}: expected a number or 'N%'")
            return cls(float(match.group(1)) / 100.0, relative=True)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
            raise ValueError(f"tolerance {raw!r}: expected a non-negative number or 'N%'")
        return cls(float(raw))

    def limit(self, old: float) -> float:
        return self.value * abs(old) if self.relative else self.value

    def allows(self, old: float, new: float) -> bool:
        if math.isnan(old) or math.isnan(new):
            return math.isnan(old) and math.isnan(new)
        return abs(new - old) <= self.limit(old) + 1e-12

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Drift:
    """The baseline comparison of one result (``status``: ok, drift, new or n/a)."""

    key: str
    status: str
    message: str
    tolerance: str
    old: Mapping[str, Any] | None
    changes: tuple[dict[str, Any], ...] = ()

    @property
    def fails(self) -> bool:
        return self.status in ("drift", "new")

    def to_json(self, file: Path) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "tolerance": self.tolerance,
                "baseline": dict(self.old) if self.old else None,
                "changes": list(self.changes), "file": str(file)}


def result_key(record: Mapping[str, Any]) -> str:
    """``claim | family | ref->post``: what identifies a result across runs."""
    return f"{record['claim_id']} | {record['family']} | {'->'.join(record['pair'])}"


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def write_baseline(path: Path, records: Iterable[Mapping[str, Any]],
                   thresholds_sha256: str = "") -> int:
    """Write the baseline of ``records`` to ``path`` (atomically); return the result count."""
    results = {}
    for rec in records:
        results[result_key(rec)] = {
            "claim_id": rec["claim_id"], "family": rec["family"], "pair": list(rec["pair"]),
            "metric": _num(rec.get("metric")), "control": _num(rec.get("control")),
            "interval": rec.get("interval"), "verdict": rec.get("verdict"),
            "checkpoints": rec.get("checkpoints", {}),
        }
    data = {
        "mechtests_baseline": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "thresholds_sha256": thresholds_sha256,
        "results": dict(sorted(results.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    from mechtests.checkpoints.atomic import write_file_atomically

    write_file_atomically(path, json.dumps(data, indent=1, allow_nan=True) + "\n")
    return len(results)


def load_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """The stored results of a baseline file, keyed by :func:`result_key`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BaselineError(
            f"baseline {path} cannot be read ({exc}). Fix: rerun with --update-baseline to "
            "write a fresh one."
        ) from None
    if not isinstance(data, dict) or data.get("mechtests_baseline") != FORMAT_VERSION:
        raise BaselineError(
            f"baseline {path} is not a mechtests baseline (format {FORMAT_VERSION}). Fix: point "
            "--baseline at a file written by --update-baseline."
        )
    return dict(data.get("results") or {})


def _inconclusive_moved(old: Any, new: Any) -> str | None:
    """A verdict that became, or stopped being, INCONCLUSIVE (a precondition or the interval's
    power changed): a drift even when the numbers stay within tolerance, because under
    ``--allow-inconclusive`` a PASS turning INCONCLUSIVE would otherwise pass silently."""
    if old is None or old == new or INCONCLUSIVE not in (old, new):
        return None
    return f"verdict {old} -> {new}"


def compare(records: Iterable[Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]],
            tolerance_for: Callable[[str, str], Tolerance]) -> list[Drift]:
    """One :class:`Drift` per record, in order."""
    out = []
    for rec in records:
        key = result_key(rec)
        where = f"{rec['claim_id']} on {rec['family']} ({'->'.join(rec['pair'])})"
        tol = tolerance_for(rec["claim_id"], rec["family"])
        old = baseline.get(key)
        if old is None:
            out.append(Drift(key, "new", f"{where}: not in the baseline (new result)",
                             str(tol), None))
            continue
        changes: list[dict[str, Any]] = []
        bad: list[str] = []
        status = "ok"
        measured = rec.get("metric") is not None and old.get("metric") is not None
        for name in COMPARED if measured else ():
            before, now = _num(old.get(name)), _num(rec.get(name))
            if before is None or now is None:
                continue
            ok = tol.allows(before, now)
            changes.append({"field": name, "old": before, "new": now, "delta": now - before,
                            "ok": ok})
            if not ok:
                status = "drift"
                bad.append(f"{name} {before:.6g} -> {now:.6g} (change {now - before:+.3g}, "
                           f"tolerance {tol})")
        verdict_moved = _inconclusive_moved(old.get("verdict"), rec.get("verdict"))
        if verdict_moved:
            status = "drift"
            bad.append(verdict_moved)
        if not changes and not verdict_moved:
            status, message = "n/a", f"{where}: no metric to compare ({rec.get('verdict')})"
        elif bad:
            message = f"{where}: " + "; ".join(bad)
        else:
            worst = max(abs(c["delta"]) for c in changes)
            message = f"{where}: within tolerance {tol} (largest change {worst:.3g})"
        out.append(Drift(key, status, message, str(tol), old, tuple(changes)))
    return out


class BaselineGate:
    """Controller plugin: compares (or writes) the baseline at session end, before the matrix
    is written, so ``claim_matrix.{json,html}`` carry each result's ``drift``."""

    def __init__(self, path: Path, update: bool, state: Any, prune: bool = False) -> None:
        self.path = path
        self.update = update
        self.prune = prune  # --baseline-prune: an update may drop results this run lacks
        self.state = state  # the plugin's state: .records (list of dicts), .thresholds
        self.lines: list[str] = []
        self.failed = False

    def tolerance_for(self, claim_id: str, family: str) -> Tolerance:
        try:
            spec = self.state.thresholds.spec(claim_id, family)
        except Exception:  # a claim without thresholds: the default
            return Tolerance.parse(None)
        return Tolerance.parse(getattr(spec, "tolerance", None))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        records: list[Record] = self.state.records
        if not records:
            self.lines.append(f"no claim results: baseline {self.path} neither read nor written")
            return
        sha = getattr(self.state.thresholds, "sha256", "")
        from mechtests.plugin.recorder import incomplete_reason

        incomplete = incomplete_reason(session, self.state)
        if incomplete and (self.update or not self.path.exists()):
            self.lines.append(f"baseline {self.path} NOT written: the run is incomplete "
                              f"({incomplete}). Fix: rerun to the end.")
            return
        if self.update:
            kept = self._kept(records)
            n = write_baseline(self.path, [*kept, *records], sha)
            self.lines.append(f"wrote baseline {self.path} ({n} results, --update-baseline"
                              + (f"; kept {len(kept)} stored results this run did not produce)"
                                 if kept else ")"))
            return
        if not self.path.exists():
            n = write_baseline(self.path, records, sha)
            self.lines.append(
                f"FAILED: baseline {self.path} did not exist; wrote it from this run ({n} "
                "results). New numbers never pass silently: review and commit the file, then "
                "rerun to compare against it."
            )
            self._fail(session)
            return
        try:
            baseline = load_baseline(self.path)
        except BaselineError as exc:
            self.lines.append(f"FAILED: {exc}")
            self._fail(session)
            return
        drifts = compare(records, baseline, self.tolerance_for)
        for rec, drift in zip(records, drifts):
            rec["drift"] = drift.to_json(self.path)
        failing = [d for d in drifts if d.fails]
        counts: dict[str, int] = {}
        for d in drifts:
            counts[d.status] = counts.get(d.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        self.lines.append(f"compared {len(drifts)} results with baseline {self.path}: {summary}")
        for d in failing:
            label = "baseline drift" if d.status == "drift" else "not in baseline"
            self.lines.append(f"FAILED {label}: {d.message}")
        seen = {d.key for d in drifts}
        absent = sorted(set(baseline) - seen)
        if absent:
            self.lines.append(f"{len(absent)} baseline result(s) not in this run (deselected?): "
                              + "; ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))
        if failing:
            self.lines.append(f"Fix: if the change is intended, rerun with --baseline "
                              f"{self.path} --update-baseline and commit the file.")
            self._fail(session)

    def _kept(self, records: list[Record]) -> list[dict[str, Any]]:
        """Stored results this run did not produce: kept unless ``--baseline-prune``, so a
        partial run (``-k``, one family) never shrinks the baseline."""
        if self.prune or not self.path.exists():
            return []
        try:
            stored = load_baseline(self.path)
        except BaselineError:
            return []
        produced = {result_key(rec) for rec in records}
        return [dict(old) for key, old in stored.items() if key not in produced]

    def _fail(self, session: pytest.Session) -> None:
        """Drift alone exits with EXIT_DRIFT; a failed claim keeps pytest's 1."""
        from mechtests.errors import EXIT_DRIFT

        self.failed = True
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = EXIT_DRIFT

    @pytest.hookimpl(trylast=True)  # after the claim matrix
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.write_sep("=", "mechtests baseline", red=self.failed, bold=self.failed)
        for line in self.lines:
            terminalreporter.write_line(line, red=line.startswith("FAILED"))


def register_baseline(config: pytest.Config, state: Any) -> None:
    """Register :class:`BaselineGate` on the controller when ``--baseline`` is given."""
    path = config.getoption("--baseline")
    update = bool(config.getoption("--update-baseline"))
    if update and not path:
        raise pytest.UsageError(
            "--update-baseline needs --baseline FILE (the file to write). Fix: pass "
            "--baseline reports/baseline.json --update-baseline."
        )
    if path:
        prune = bool(config.getoption("--baseline-prune", False))
        config.pluginmanager.register(BaselineGate(Path(path), update, state, prune),
                                      "mechtests-baseline")
