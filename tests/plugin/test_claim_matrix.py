"""The claim suite end to end on the tiny random family: matrix, xdist, expected failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CLAIM = "truth.direction.cosine"


def run_suite(pytester: pytest.Pytester, cache: Path, report: Path, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--pyargs", "mechtests.suite", "--model-family", "tiny", "-p", "no:cacheprovider",
        "--mechtests-cache", str(cache), "--claim-report", str(report), "-k", CLAIM, *extra,
    )


def metrics(report: Path) -> dict[tuple[str, str, str], float | None]:
    data = json.loads((report / "claim_matrix.json").read_text())
    return {(r["claim_id"], r["family"], "->".join(r["pair"])): r["metric"] for r in data["results"]}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_the_matrix_is_printed_and_written(pytester: pytest.Pytester, cache_dir: Path) -> None:
    report = pytester.path / "reports"
    result = run_suite(pytester, cache_dir, report)
    result.stdout.fnmatch_lines(["*mechtests claim matrix*", f"*{CLAIM}*", "verdicts: *"])
    data = json.loads((report / "claim_matrix.json").read_text())
    assert {"machine_info", "thresholds", "checkpoints", "results"} <= set(data)
    rows = [r for r in data["results"] if r["claim_id"] == CLAIM]
    assert {"->".join(r["pair"]) for r in rows} == {"base->sft", "base->instruct"}
    for row in rows:
        assert row["verdict"] in {"PASS", "FAIL"}
        assert row["control"] is not None and row["source"]
    assert (report / "claim_matrix.md").read_text().startswith("# mechtests claim matrix")


def test_a_parallel_run_gives_the_same_metrics_as_a_serial_one(
    pytester: pytest.Pytester, cache_dir: Path
) -> None:
    serial, parallel = pytester.path / "serial", pytester.path / "parallel"
    run_suite(pytester, cache_dir, serial, "-n", "0")
    run_suite(pytester, cache_dir, parallel, "-n", "2")
    assert metrics(serial) == metrics(parallel)
    assert len(metrics(serial)) == 2


def test_an_expected_failure_is_a_strict_xfail(pytester: pytest.Pytester, cache_dir: Path) -> None:
    packaged = Path(__file__).parents[2] / "thresholds.yaml"
    text = packaged.read_text().replace(
        "expected_failures: {}", f'expected_failures:\n  tiny: {{{CLAIM}: "test: impossible threshold"}}'
    )
    # an impossible threshold: the claim fails, and the failure is expected
    impossible = pytester.path / "impossible.yaml"
    impossible.write_text(_with_value(text, 2.0))
    result = run_suite(pytester, cache_dir, pytester.path / "r1", "--thresholds", str(impossible))
    result.assert_outcomes(xfailed=2)
    # a trivial threshold: the expected failure now passes -> XPASS(strict) fails the run
    trivial = pytester.path / "trivial.yaml"
    trivial.write_text(_with_value(text, -2.0, margin=-5.0))
    result = run_suite(pytester, cache_dir, pytester.path / "r2", "--thresholds", str(trivial))
    result.assert_outcomes(failed=2)


def _with_value(text: str, value: float, margin: float | None = None) -> str:
    import yaml

    data = yaml.safe_load(text)
    data["claims"][CLAIM]["value"] = value
    data["claims"][CLAIM].pop("families", None)
    if margin is not None:
        data["claims"][CLAIM]["control_margin"] = margin
    return yaml.safe_dump(data)
