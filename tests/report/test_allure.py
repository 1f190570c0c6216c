"""Allure results of claim tests, and ``mechtests report``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from report_helpers import run_chromium, tiny_png, write_synthetic_matrix

from mechtests.report import allure as mallure
from mechtests.report.cli import run_report

SYNTHETIC_TEST = '''
import json
from mechtests.measures.runner import ClaimRecord

def test_synthetic_claim(record_property):
    rec = ClaimRecord(
        claim_id="truth.direction.cosine", area="truth", family="organism",
        pair=["base", "instruct"], statement="one direction", paper="Du et al. 2025 claim 3",
        metric_name="cos", verdict="PASS", message="ok", metric=0.93, control=0.1,
        control_label="control base", op=">=", threshold=0.8, control_margin=0.3,
        source="docs/claims.md (claim 3)", checkpoints={"base": "aaaa", "instruct": "bbbb"},
        artifacts=["plots/truth_cosine.png"])
    record_property("mechtests_claim", json.dumps(rec.to_json()))
'''


def test_allure_results_carry_family_models_claim_and_the_plots(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_synthetic=SYNTHETIC_TEST)
    reports = pytester.path / "reports"
    tiny_png(reports / "plots" / "truth_cosine.png")
    results = pytester.path / "allure-results"
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0",
                                            "--claim-report", str(reports),
                                            "--alluredir", str(results))
    outcome.assert_outcomes(passed=1)
    (result_file,) = results.glob("*-result.json")
    result = json.loads(result_file.read_text())
    params = {p["name"]: p["value"] for p in result["parameters"]}
    assert params["family"] == "'organism'"
    assert params["models"] == "'base -> instruct'"
    assert params["claim"] == "'truth.direction.cosine'"
    assert result["name"] == "truth.direction.cosine on organism (base -> instruct)"
    labels = {(lab["name"], lab["value"]) for lab in result["labels"]}
    assert {("feature", "truth"), ("story", "truth.direction.cosine"), ("tag", "PASS")} <= labels
    attachments = {a["name"]: a for a in result["attachments"]}
    assert set(attachments) == {"claim record.json", "truth_cosine.png"}
    record = json.loads((results / attachments["claim record.json"]["source"]).read_text())
    assert record["metric"] == 0.93
    assert (results / attachments["truth_cosine.png"]["source"]).read_bytes() == \
        (reports / "plots" / "truth_cosine.png").read_bytes()


def test_report_without_node_says_in_one_line_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "allure-results").mkdir()
    (tmp_path / "allure-results" / "x-result.json").write_text("{}")
    monkeypatch.delenv("MECHTESTS_ALLURE", raising=False)
    monkeypatch.setattr(mallure.shutil, "which", lambda name: None)
    code = run_report(_args(tmp_path))
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert out[-1] == mallure.NODE_HINT


def test_report_without_the_allure_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "allure-results").mkdir()
    (tmp_path / "allure-results" / "x-result.json").write_text("{}")
    monkeypatch.setattr(mallure, "find_allure", lambda cwd=None: None)
    monkeypatch.setattr(mallure.shutil, "which", lambda name: f"/usr/bin/{name}")
    code = run_report(_args(tmp_path))
    assert code == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == mallure.INSTALL_HINT


def test_report_rerenders_the_html_matrix_from_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from report_helpers import synthetic_records

    write_synthetic_matrix(tmp_path, synthetic_records())
    (tmp_path / "claim_matrix.html").unlink()
    assert run_report(_args(tmp_path, allure=None)) == 0
    assert (tmp_path / "claim_matrix.html").read_text().startswith("<!DOCTYPE html>")
    assert "no Allure results" in capsys.readouterr().out


def test_report_renders_a_single_file_allure_report_that_opens_from_disk(
    pytester: pytest.Pytester, tmp_path: Path, chromium: str
) -> None:
    if mallure.find_allure() is None:
        pytest.skip("Allure 3 not installed (npm install allure, or MECHTESTS_ALLURE=<command>)")
    pytester.makepyfile(test_synthetic=SYNTHETIC_TEST)
    results = pytester.path / "allure-results"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0",
                                  "--alluredir", str(results)).assert_outcomes(passed=1)
    code, line = mallure.render_allure(results, tmp_path / "out")
    assert code == 0, line
    out = tmp_path / "out"
    assert [p.name for p in out.iterdir() if p.suffix == ".html" or p.is_dir()] == ["index.html"]
    dom = run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=10000",
                       "--dump-dom", (out / "index.html").as_uri())
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r'"data:[^"]*"', "", dom)).split())
    assert "mechtests claims" in text  # rendered by the report's script from embedded data
    assert " truth " in f" {text} "  # the tree groups by area (feature label), then claim


def _args(report_dir: Path, allure: str | None = "allure-results") -> object:
    from argparse import Namespace

    return Namespace(claim_report=str(report_dir), output=None,
                     alluredir=str(report_dir / allure) if allure else None)
