"""The controller's recorder: collects claim records (also from xdist workers), prints the
claim matrix with one line per problem cell, and writes the reports, marked incomplete when the
run stopped early."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

RECORD_KEY = "mechtests_claim"


class Recorder:
    """Collects claim records (also from xdist workers) and writes the matrix on the controller.

    The plugin state is reached lazily: ``peek()`` gives it when it exists (else None), and
    ``load()`` builds it; it is built only when a claim test is collected or reports a record,
    so a run without claim tests never reads the suite's YAML files."""

    def __init__(self, peek: Callable[[], Any], load: Callable[[], Any]) -> None:
        self._peek = peek
        self._load = load

    @property
    def state(self) -> Any:
        """The plugin state (built on first access)."""
        return self._load()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.config.getoption("collectonly"):
            return
        claims = sum(_is_claim_test(item.nodeid) for item in session.items)
        if claims or self._peek() is not None:
            self.state.expected = claims

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        claims = sum(map(_is_claim_test, ids))
        if claims or self._peek() is not None:
            self.state.expected = max(self.state.expected or 0, claims)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.when == "setup" and report.skipped):
            return
        for key, value in report.user_properties:
            if key != RECORD_KEY:
                continue
            record = json.loads(str(value))
            if hasattr(report, "wasxfail") and record["verdict"] == "FAIL":
                record["verdict"] = "XFAIL"
            elif record.get("expected_failure") and record["verdict"] == "PASS":
                record["verdict"] = "XPASS"
            self.state.records.append(record)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._peek() is None:
            return
        reason = self.state.incomplete
        if self.state.records:
            from mechtests.report.cards import format_gates, read_cards
            from mechtests.report.matrix import format_terminal

            for (family, path), card in read_cards(self.state.records).items():
                for line in format_gates(family, path, card):
                    terminalreporter.write_line(line)

            for line in format_terminal(self.state.records, str(self.state.report_dir)):
                terminalreporter.write_line(line)
            for line in problem_lines(self.state.records):
                terminalreporter.write_line(line, red=True)
        if self.state.write_error:
            terminalreporter.write_line(self.state.write_error, red=True, bold=True)
        if reason and (self.state.records or self.state.expected):
            terminalreporter.write_line(
                f"mechtests: INCOMPLETE RUN: {reason}. The claim matrix is marked incomplete and "
                "no baseline is written from it. Fix: rerun without stopping it.",
                red=True, bold=True)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._peek() is None:
            return
        self.state.incomplete = incomplete_reason(session, self.state)
        if not self.state.records:
            return
        from mechtests.report.matrix import write_matrix

        opt = session.config.getoption
        try:
            paths = write_matrix(
                self.state.records, self.state.report_dir, self.state.thresholds,
                self.state.families,
                options={"max_examples": examples_per_family(opt("--max-examples"),
                                                             self.state.families),
                         "dtype": opt("--mechtests-dtype"),
                         "backend": opt("--mechtests-backend"),
                         "device": opt("--mechtests-device")},
                incomplete=self.state.incomplete,
            )
        except OSError as exc:  # the results stay on the terminal; the run still ends cleanly
            self.state.write_error = (
                f"mechtests: the claim matrix could not be written to {self.state.report_dir} "
                f"({exc.strerror}: {exc.filename}). Fix: point --claim-report at a writable "
                "directory.")
            return
        self.state.written = paths


def examples_per_family(given: str | None, families: dict[str, Any]) -> dict[str, int | str]:
    """Each family's examples per dataset in this run: ``--max-examples`` where given, else the
    family's default; ``all`` for every example."""
    from mechtests.families import ALL_EXAMPLES, parse_max_examples

    limit = parse_max_examples(given)
    return {name: fam.examples(limit) or ALL_EXAMPLES for name, fam in families.items()}


def problem_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per FAIL / INCONCLUSIVE / ERROR / XPASS cell: the verdict, where, and the
    reason (an INCONCLUSIVE one fails the gate too, unless --allow-inconclusive)."""
    lines = []
    for rec in sorted(records, key=lambda r: (r["claim_id"], r["family"], r["pair"])):
        if rec["verdict"] in ("FAIL", "INCONCLUSIVE", "ERROR", "XPASS"):
            message = " ".join(str(rec.get("message") or "").split())[:300]
            lines.append(f"{rec['verdict']} {rec['claim_id']} on {rec['family']} "
                         f"({'->'.join(rec['pair'])}): {message}")
    return lines


def _is_claim_test(nodeid: str) -> bool:
    return "::test_claim_holds[" in nodeid


def incomplete_reason(session: pytest.Session, state: Any) -> str | None:
    """Why this run's claim results are partial (Ctrl-C, ``-x``, a crash), or None."""
    if session.exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
        return f"pytest stopped it (exit status {int(session.exitstatus)})"
    stop = session.shouldstop or session.shouldfail
    if stop:
        return f"pytest stopped it ({stop})"
    if state.expected is not None and len(state.records) < state.expected:
        return f"{len(state.records)} of {state.expected} claim results were recorded"
    return None
