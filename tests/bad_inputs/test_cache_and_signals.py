"""Bad cache entries and runs that stop early: never a silent number, never a report or a
baseline that looks complete."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from mechtests.claims.table import load_claims
from mechtests.errors import EXIT_INTERRUPTED, CacheError
from mechtests.measures.refusal.runs import _texts_check
from mechtests.measures.truth.runs import _steering_check
from mechtests.store import read_checked, write_checked
from tests.bad_inputs.conftest import Case

CLAIMS = [claim.id for claim in load_claims()[:2]]
SYNTHETIC = f'''
import json, os, signal
from mechtests.measures.runner import ClaimRecord

def _record(record_property, claim, metric):
    rec = ClaimRecord(claim_id=claim, area=claim.split(".")[0], family="organism",
                      pair=["base", "instruct"], statement="s", paper="p", metric_name="m",
                      verdict="PASS", message="ok", metric=metric, control=0.1, op=">=",
                      threshold=0.5, control_margin=0.2, source="synthetic")
    record_property("mechtests_claim", json.dumps(rec.to_json()))

def test_first(record_property):
    _record(record_property, "{CLAIMS[0]}", 0.7)

def test_second():
    if os.environ.get("STOP") == "sigint":
        # Python's own Ctrl-C handler, even where the run was started with SIGINT ignored
        # (a background job of a non-interactive shell)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGINT)
    assert os.environ.get("STOP") != "fail", "stop here"

def test_third(record_property):
    _record(record_property, "{CLAIMS[1]}", 0.8)
'''
STEER = {"positions": [-2, -1], "none": {"true": [0.5, 0.4], "false": [-0.2]},
         "subtract": {"base": [0.1, 0.2]}, "add": {"base": [0.3]}}


def _synthetic(pytester: pytest.Pytester, stop: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_synthetic=SYNTHETIC)
    rules = {cid: {"op": ">=", "value": 0.5, "control_margin": 0.2, "source": "synthetic"}
             for cid in CLAIMS}
    thresholds = pytester.path / "thresholds.yaml"
    thresholds.write_text(yaml.safe_dump({"claims": rules}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STOP", stop)
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-n", "0", "-p", "no:randomly", "--thresholds",
            str(thresholds), "--claim-report", str(pytester.path / "reports"), *args)


def test_a_steering_entry_with_arrays_of_the_wrong_length_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "steer.json"
    path.write_text(json.dumps(STEER))
    check = _steering_check(n_true=2, n_false=1, names=["base"])
    assert read_checked(path, check) == STEER
    check_more = _steering_check(n_true=3, n_false=1, names=["base"])
    with pytest.warns(UserWarning, match=r"subtract.base has 2 values, expected 3\); recomputing"):
        assert read_checked(path, check_more) is None


def test_a_truncated_cache_entry_is_recomputed_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "steer.json"
    path.write_text(json.dumps(STEER)[:40])
    with pytest.warns(UserWarning, match="does not load"):
        assert read_checked(path, _steering_check(2, 1, ["base"])) is None


def test_a_non_finite_steering_result_is_an_error_with_its_cause_and_is_not_cached(
    tmp_path: Path,
) -> None:
    path = tmp_path / "steer.json"
    bad = {**STEER, "add": {"base": [float("nan")]}}
    with pytest.raises(CacheError, match=r"add.base holds NaN or inf\. Fix: run in float32"):
        write_checked(path, bad, _steering_check(2, 1, ["base"]), "steering P_diff of x")
    assert not path.exists()
    assert not list(tmp_path.iterdir())


def test_empty_generations_are_an_error_not_a_no_refusal_score(tmp_path: Path) -> None:
    path = tmp_path / "gen.json"
    with pytest.raises(CacheError, match=r"all 3 generations are empty.*Fix:"):
        write_checked(path, ["", " ", ""], _texts_check(3, "baseline"), "generations of x")
    path.write_text(json.dumps(["", "", ""]))
    with pytest.warns(UserWarning, match="all 3 generations are empty"):
        assert read_checked(path, _texts_check(3, "baseline")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_checked(path, ["Sorry", ""], _texts_check(2, "baseline"), "generations of x")
        assert read_checked(path, _texts_check(2, "baseline")) == ["Sorry", ""]


def test_an_unwritable_cache_entry_is_one_line_with_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheError, match=r"cannot write cache entry .*Fix: point --mechtests"):
        write_checked(blocker / "sub" / "gen.json", ["a"], _texts_check(1, "x"), "gen")


def test_ctrl_c_leaves_reports_marked_incomplete_in_every_format_and_no_baseline(
    pytester: pytest.Pytester,
) -> None:
    baseline = pytester.path / "baseline.json"
    result = _synthetic(pytester, "sigint", "--baseline", str(baseline), "--update-baseline")
    assert result.ret == EXIT_INTERRUPTED
    result.stdout.fnmatch_lines(["*mechtests: INCOMPLETE RUN: pytest stopped it*"])
    reports = pytester.path / "reports"
    data = json.loads((reports / "claim_matrix.json").read_text())
    assert data["complete"] is False
    assert "stopped" in data["incomplete_reason"]
    assert "**INCOMPLETE RUN**" in (reports / "claim_matrix.md").read_text()
    assert 'id="incomplete"' in (reports / "claim_matrix.html").read_text()
    assert not baseline.exists()


def test_a_run_stopped_by_x_never_replaces_the_stored_baseline(pytester: pytest.Pytester) -> None:
    baseline = pytester.path / "baseline.json"
    assert _synthetic(pytester, "", "--baseline", str(baseline), "--update-baseline").ret == 0
    stored = baseline.read_text()
    result = _synthetic(pytester, "fail", "-x", "--baseline", str(baseline),
                        "--update-baseline")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*baseline {baseline} NOT written: the run is incomplete*"])
    assert baseline.read_text() == stored
    complete = json.loads((pytester.path / "reports" / "claim_matrix.json").read_text())
    assert complete["complete"] is False


def test_a_partial_update_never_shrinks_the_baseline_without_prune(
    pytester: pytest.Pytester,
) -> None:
    baseline = pytester.path / "baseline.json"
    _synthetic(pytester, "", "--baseline", str(baseline), "--update-baseline")
    partial = _synthetic(pytester, "", "-k", "first", "--baseline", str(baseline),
                         "--update-baseline")
    partial.stdout.fnmatch_lines(["*kept 1 stored results this run did not produce*"])
    assert len(json.loads(baseline.read_text())["results"]) == 2
    _synthetic(pytester, "", "-k", "first", "--baseline", str(baseline), "--update-baseline",
               "--baseline-prune")
    assert len(json.loads(baseline.read_text())["results"]) == 1


def test_a_claim_run_without_results_removes_the_previous_report(case: Case) -> None:
    case.reports.mkdir()
    for name in ("claim_matrix.json", "claim_matrix.md", "claim_matrix.html"):
        (case.reports / name).write_text("from an earlier run")
    result = case.run("-k", "no_such_claim")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert not list(case.reports.glob("claim_matrix.*"))


def test_a_claim_report_that_is_a_file_never_crashes_the_end_of_a_run(
    pytester: pytest.Pytester,
) -> None:
    blocker = pytester.path / "blocker"
    blocker.write_text("keep me")
    result = _synthetic(pytester, "", "--claim-report", str(blocker))
    result.stdout.fnmatch_lines(["mechtests: the claim matrix could not be written to *"
                                 "Fix: point --claim-report at a writable directory."])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert blocker.read_text() == "keep me"
