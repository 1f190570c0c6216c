"""The release gate's pytest side: compare (or write) the baseline at session end.

The comparison itself is pure and lives in :mod:`mechtests.report.baseline`; this module holds
the controller plugin that runs it inside pytest and fails the session on drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mechtests.report.baseline import (
    BaselineError,
    Record,
    Tolerance,
    compare,
    load_baseline,
    result_key,
    write_baseline,
)

__all__ = ["BaselineGate", "register_baseline"]


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
