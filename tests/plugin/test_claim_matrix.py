"""The claim suite end to end on the tiny random family: matrix, xdist, expected failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CLAIM = "truth.direction.cosine"


FAMILIES = Path(__file__).parents[2] / "mechtests" / "families.yaml"


def judged_tiny(directory: Path) -> Path:
    """A copy of the tiny family that is judged like a real one (tiny itself reports INFO)."""
    import yaml

    block = yaml.safe_load(FAMILIES.read_text())["tiny"]
    block["random_weights"] = False
    path = directory / "judged.yaml"
    path.write_text(yaml.safe_dump({"tinyj": block}))
    return path


def run_suite(
    pytester: pytest.Pytester, cache: Path, report: Path, *extra: str, family: str = "tinyj"
) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--pyargs",
        "mechtests.suite",
        "--families-file",
        str(judged_tiny(pytester.path)),
        "--model-family",
        family,
        "-p",
        "no:cacheprovider",
        "--mechtests-cache",
        str(cache),
        "--claim-report",
        str(report),
        "-k",
        CLAIM,
        *extra,
    )


def metrics(report: Path) -> dict[tuple[str, str, str], float | None]:
    data = json.loads((report / "claim_matrix.json").read_text())
    return {
        (r["claim_id"], r["family"], "->".join(r["pair"])): r["metric"] for r in data["results"]
    }


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
        assert row["control"] is not None
        assert row["source"]
    assert (report / "claim_matrix.md").read_text().startswith("# mechtests claim matrix")


def test_a_random_weight_family_reports_numbers_without_verdicts(
    pytester: pytest.Pytester, cache_dir: Path
) -> None:
    report = pytester.path / "reports"
    result = run_suite(pytester, cache_dir, report, family="tiny")
    result.assert_outcomes(passed=2)
    rows = json.loads((report / "claim_matrix.json").read_text())["results"]
    assert {r["verdict"] for r in rows} == {"INFO"}
    assert all(r["metric"] is not None for r in rows)


def test_a_parallel_run_gives_the_same_metrics_as_a_serial_one(
    pytester: pytest.Pytester, cache_dir: Path
) -> None:
    serial, parallel = pytester.path / "serial", pytester.path / "parallel"
    run_suite(pytester, cache_dir, serial, "-n", "0")
    run_suite(pytester, cache_dir, parallel, "-n", "2")
    assert metrics(serial) == metrics(parallel)
    assert len(metrics(serial)) == 2


def test_an_expected_failure_is_a_strict_xfail(pytester: pytest.Pytester, cache_dir: Path) -> None:
    # an impossible threshold: the claim fails, and the failure is expected
    impossible = pytester.path / "impossible.yaml"
    impossible.write_text(_thresholds(value=2.0))
    result = run_suite(pytester, cache_dir, pytester.path / "r1", "--thresholds", str(impossible))
    result.assert_outcomes(xfailed=2)
    # a trivial threshold: the expected failure now passes -> XPASS(strict) fails the run
    trivial = pytester.path / "trivial.yaml"
    trivial.write_text(_thresholds(value=-2.0, margin=-5.0))
    result = run_suite(pytester, cache_dir, pytester.path / "r2", "--thresholds", str(trivial))
    result.assert_outcomes(failed=2)


def _thresholds(value: float, margin: float | None = None) -> str:
    import yaml

    data = yaml.safe_load((Path(__file__).parents[2] / "thresholds.yaml").read_text())
    rule = data["claims"][CLAIM]
    rule["value"] = value
    rule.pop("families", None)
    if margin is not None:
        rule["control_margin"] = margin
    data["expected_failures"] = {"tinyj": {CLAIM: "test: an impossible threshold"}}
    return yaml.safe_dump(data)


def _unreachable_precondition(expected_failure: bool = False) -> str:
    """The claim with a precondition no run meets (a billion training statements)."""
    import yaml

    data = yaml.safe_load((Path(__file__).parents[2] / "thresholds.yaml").read_text())
    data["claims"][CLAIM]["preconditions"] = [
        {"quantity": "n_train", "op": ">=", "value": 1e9, "why": "enough training statements",
         "source": "test: unreachable"}]
    data["expected_failures"] = {"tinyj": {CLAIM: "test: expected"}} if expected_failure else {}
    return yaml.safe_dump(data)


def _verdicts(report: Path) -> set[str]:
    return {r["verdict"] for r in json.loads((report / "claim_matrix.json").read_text())["results"]}


def test_an_inconclusive_claim_fails_the_gate_unless_allowed(
    pytester: pytest.Pytester, cache_dir: Path
) -> None:
    rules = pytester.path / "unreachable.yaml"
    rules.write_text(_unreachable_precondition())
    strict = run_suite(pytester, cache_dir, pytester.path / "r1", "--thresholds", str(rules))
    strict.assert_outcomes(failed=2)
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*INCONCLUSIVE n_train *<1e+09*"])
    assert _verdicts(pytester.path / "r1") == {"INCONCLUSIVE"}
    relaxed = run_suite(pytester, cache_dir, pytester.path / "r2", "--thresholds", str(rules),
                        "--allow-inconclusive")
    relaxed.assert_outcomes(skipped=2)
    assert relaxed.ret == 0
    assert _verdicts(pytester.path / "r2") == {"INCONCLUSIVE"}


def test_an_inconclusive_expected_failure_is_neither_an_xfail_nor_an_xpass(
    pytester: pytest.Pytester, cache_dir: Path
) -> None:
    rules = pytester.path / "unreachable_xfail.yaml"
    rules.write_text(_unreachable_precondition(expected_failure=True))
    result = run_suite(pytester, cache_dir, pytester.path / "r", "--thresholds", str(rules))
    result.assert_outcomes(failed=2)
    assert _verdicts(pytester.path / "r") == {"INCONCLUSIVE"}


def test_allow_inconclusive_is_in_the_mechtests_help_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    text = result.stdout.str()
    group = text[text.index("mechtests: post-training claim tests"):]
    assert "--allow-inconclusive" in group
    assert "Default: off" in group[group.index("--allow-inconclusive"):][:400]
