"""INCONCLUSIVE cells in every report: terminal, Markdown, JSON, HTML and the baseline."""

from __future__ import annotations

import json
from pathlib import Path

from report_helpers import inconclusive_records, write_synthetic_matrix

from mechtests.report.baseline import Tolerance, compare, result_key
from mechtests.report.html import VERDICTS, render_html
from mechtests.report.matrix import cell_text, format_terminal


def test_a_terminal_cell_names_the_failed_precondition_or_the_spanned_threshold() -> None:
    precondition, power = inconclusive_records()
    assert cell_text(precondition) == "INCONCLUSIVE own_ie -0.019<0.1"
    assert cell_text(power) == "INCONCLUSIVE 0.743..0.957 spans 0.95 c0.444"
    lines = format_terminal([precondition, power])
    assert "verdicts: 2 INCONCLUSIVE" in lines


def test_markdown_and_json_carry_the_reason_and_the_checks(tmp_path: Path) -> None:
    write_synthetic_matrix(tmp_path, inconclusive_records())
    markdown = (tmp_path / "claim_matrix.md").read_text()
    assert "own-vector steering works: own_ie -0.019 < 0.1" in markdown
    assert "half-width 0.107 > distance 0.0024" in markdown
    rows = json.loads((tmp_path / "claim_matrix.json").read_text())["results"]
    by_claim = {r["claim_id"]: r for r in rows}
    assert by_claim["truth.steering.forward_ratio"]["preconditions"][0]["holds"] is False
    assert by_claim["knowledge.heatmap.correlation"]["power"]["decided"] is False


def test_an_html_cell_is_coloured_counted_and_shows_why() -> None:
    assert "INCONCLUSIVE" in VERDICTS
    page = render_html(inconclusive_records(), {"datetime": "now"})
    assert page.count('class="cell v-INCONCLUSIVE"') == 2
    assert ".v-INCONCLUSIVE{" in page
    assert "own_ie -0.019 &lt; 0.1" in page  # the reason is in the cell, not only the tooltip
    assert "FAILED own-vector steering works" in page  # the details panel's preconditions
    assert "'INCONCLUSIVE'" in page  # the problems filter keeps its rows


def test_a_verdict_that_turns_inconclusive_is_a_baseline_drift_within_tolerance() -> None:
    record = {"claim_id": "a.b.c", "family": "organism", "pair": ["base", "sft"],
              "metric": 0.5, "control": 0.1, "verdict": "INCONCLUSIVE"}
    tol = Tolerance.parse(None)
    stored = {"metric": 0.5, "control": 0.1}
    (moved,) = compare([record], {result_key(record): {**stored, "verdict": "PASS"}},
                       lambda claim, family: tol)
    assert (moved.status, moved.fails) == ("drift", True)
    assert "verdict PASS -> INCONCLUSIVE" in moved.message
    (same,) = compare([record], {result_key(record): {**stored, "verdict": "INCONCLUSIVE"}},
                      lambda claim, family: tol)
    assert same.status == "ok"
