"""The HTML claim matrix: rendered by a real headless chromium, cells equal to the JSON."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from report_helpers import run_chromium, write_synthetic_matrix

from mechtests.report.html import cell_parts, render_html


class Cells(HTMLParser):
    """Collects matrix cells (``td`` with data-claim) with their text, links and elements."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, Any]] = []
        self.body: dict[str, str | None] = {}
        self.by_id: dict[str, str] = {}
        self.tags: list[str] = []
        self._open: dict[str, Any] | None = None
        self._depth = 0
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "body":
            self.body = a
        if a.get("id"):
            self._id = a["id"]
            self.by_id[self._id] = ""
        if tag == "td" and a.get("data-claim"):
            self._open = {"attrs": a, "text": "", "links": []}
            self._depth = 0
            self.cells.append(self._open)
        elif self._open is not None and tag == "td":
            self._depth += 1
        if self._open is not None and tag == "a" and a.get("href"):
            self._open["links"].append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open is not None:
            if self._depth == 0:
                self._open = None
            else:
                self._depth -= 1
        if tag in ("p", "div"):
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data
        if self._id is not None:
            self.by_id[self._id] += data


def parse(html: str) -> Cells:
    parser = Cells()
    parser.feed(html)
    return parser


def dump_dom(chromium: str, page: Path, profile: Path) -> str:
    return run_chromium(chromium, profile, "--virtual-time-budget=2000", "--dump-dom",
                        page.as_uri())


def test_the_html_matrix_renders_in_chromium_and_its_cells_match_the_json(
    chromium: str, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    report = tmp_path / "reports"
    paths = write_synthetic_matrix(report, records)
    html_path = report / "claim_matrix.html"
    assert html_path in paths
    data = json.loads((report / "claim_matrix.json").read_text())
    dom = parse(dump_dom(chromium, html_path, tmp_path / "profile"))
    assert dom.body.get("data-ready") == "1", "the page's script did not run"
    cells = {(c["attrs"]["data-claim"], c["attrs"]["data-column"]): c for c in dom.cells
             if "cell" in (c["attrs"].get("class") or "")}
    results = data["results"]
    assert len(cells) == len(results)
    for rec in results:
        cell = cells[(rec["claim_id"], f"{rec['family']} {'->'.join(rec['pair'])}")]
        attrs, text = cell["attrs"], " ".join(cell["text"].split())
        assert attrs["data-verdict"] == rec["verdict"]
        assert f"v-{rec['verdict']}" in attrs["class"]
        assert text.startswith(rec["verdict"])
        if rec["metric"] is None:
            assert attrs["data-metric"] == ""
            continue
        assert float(attrs["data-metric"]) == rec["metric"]
        assert float(attrs["data-threshold"]) == rec["threshold"]
        assert cell_parts(rec)["compare"] in text
        assert f"metric {rec['metric']:.3g}" in text
        if rec["control"] is not None:
            assert float(attrs["data-control"]) == rec["control"]
            assert f"control {rec['control']:.3g}" in text
        if rec["interval"]:
            assert f"CI [{rec['interval'][0]:.3g}, {rec['interval'][1]:.3g}]" in text
        for artifact in rec["artifacts"]:
            assert artifact in [unquote(h) for h in cell["links"]]
            assert (html_path.parent / artifact).is_file()
        for shown in (rec["statement"], rec["paper"], rec["source"], rec["note"]):
            assert " ".join(shown.split()) in text
    counts: dict[str, int] = {}
    for rec in results:
        counts[rec["verdict"]] = counts.get(rec["verdict"], 0) + 1
    live = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    assert dom.by_id["live-counts"].strip() == f"cells: {live}"


def test_claim_text_is_escaped_not_rendered_as_markup(records: list[dict[str, Any]]) -> None:
    dom = parse(render_html(records, {"datetime": "now"}))
    assert "b" not in dom.tags  # the statements hold "<b>escaped</b>"
    assert any("<b>escaped</b>" in c["text"] for c in dom.cells)


def test_a_run_with_a_baseline_gets_a_drift_column_beside_each_claim_cell(
    records: list[dict[str, Any]]
) -> None:
    statuses = ["ok", "drift", "new", "n/a"]
    for i, rec in enumerate(records):
        rec["drift"] = {"status": statuses[i % 4], "message": f"m{i}", "tolerance": "0.05",
                        "changes": [{"field": "metric", "old": 0.5, "new": 0.9, "delta": 0.4,
                                     "ok": False}], "file": "baseline.json"}
    dom = parse(render_html(records, {"datetime": "now"}))
    drift = {(c["attrs"]["data-claim"], c["attrs"]["data-column"]): c["attrs"]["data-drift"]
             for c in dom.cells if "drift" in (c["attrs"].get("class") or "").split()}
    verdict = {(c["attrs"]["data-claim"], c["attrs"]["data-column"]): c["attrs"]["data-verdict"]
               for c in dom.cells if "cell" in (c["attrs"].get("class") or "").split()}
    for rec in records:
        key = (rec["claim_id"], f"{rec['family']} {'->'.join(rec['pair'])}")
        assert drift[key] == rec["drift"]["status"]
        assert verdict[key] == rec["verdict"]  # the claim verdict is untouched by drift


def test_a_screenshot_of_the_matrix_is_a_real_picture(
    chromium: str, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Also refreshes the README picture when MECHTESTS_SCREENSHOT_OUT names a file."""
    report = tmp_path / "reports"
    write_synthetic_matrix(report, records)
    shot = tmp_path / "claim_matrix.png"
    run_chromium(chromium, tmp_path / "profile", "--window-size=1400,900", "--hide-scrollbars",
                 f"--screenshot={shot}", (report / "claim_matrix.html").as_uri())
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 900)
    assert len(png) > 20_000  # a blank page compresses to a few kB
    if os.environ.get("MECHTESTS_SCREENSHOT_OUT"):
        shutil.copyfile(shot, os.environ["MECHTESTS_SCREENSHOT_OUT"])
