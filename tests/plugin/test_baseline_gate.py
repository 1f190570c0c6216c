"""--baseline / --update-baseline through the real plugin, with synthetic claim records.

The pytester test below stores a claim record on ``user_properties`` exactly as the plugin's
``check_claim`` does, so the plugin's recorder, the baseline gate and the matrix writers all run
for real, without loading a model. The metric comes from ``$SYNTH_METRIC``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mechtests.claims.table import load_claims
from mechtests.claims.thresholds import load_thresholds
from mechtests.errors import EXIT_DRIFT, ConfigError
from mechtests.report.baseline import Tolerance, compare, result_key

CLAIM = load_claims()[0].id  # any real claim id: thresholds files are checked against the table

SYNTHETIC_TEST = f'''
import json, os
from mechtests.measures.runner import ClaimRecord

def test_synthetic_claim(record_property):
    rec = ClaimRecord(
        claim_id="{CLAIM}", area="{CLAIM.split(".")[0]}", family="organism",
        pair=["base", "instruct"], statement="s", paper="p", metric_name="m", verdict="PASS",
        message="ok", metric=float(os.environ["SYNTH_METRIC"]), control=0.1,
        control_label="control base", op=">=", threshold=0.5, control_margin=0.2,
        source="synthetic")
    record_property("mechtests_claim", json.dumps(rec.to_json()))
'''


@pytest.fixture
def gate(pytester: pytest.Pytester) -> Path:
    """A pytester dir with the synthetic test and a thresholds file (tolerance 0.05)."""
    pytester.makepyfile(test_synthetic=SYNTHETIC_TEST)
    rules = {"claims": {CLAIM: {"op": ">=", "value": 0.5, "control_margin": 0.2,
                                "source": "synthetic", "tolerance": 0.05}}}
    path = pytester.path / "thresholds.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def run(pytester: pytest.Pytester, thresholds: Path, metric: float,
        *extra: str) -> pytest.RunResult:
    """One pytest run in a subprocess whose synthetic claim measures ``metric``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTH_METRIC", repr(metric))
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-n", "0", "--thresholds", str(thresholds),
            "--claim-report", str(pytester.path / "reports"), *extra,
        )


def test_a_missing_baseline_is_written_and_fails_the_run(
    pytester: pytest.Pytester, gate: Path
) -> None:
    baseline = pytester.path / "baselines" / "release.json"
    result = run(pytester, gate, 0.7, "--baseline", str(baseline))
    assert result.ret == EXIT_DRIFT
    result.stdout.fnmatch_lines([f"FAILED: baseline {baseline} did not exist; wrote it*"])
    stored = json.loads(baseline.read_text())["results"]
    assert [v["metric"] for v in stored.values()] == [0.7]
    # the same numbers again: compared, within tolerance, the run passes
    again = run(pytester, gate, 0.7, "--baseline", str(baseline))
    assert again.ret == pytest.ExitCode.OK, again.stdout.str()[-2000:]
    again.stdout.fnmatch_lines([f"compared 1 results with baseline {baseline}: 1 ok"])


def test_a_metric_beyond_tolerance_fails_the_run_naming_claim_values_and_tolerance(
    pytester: pytest.Pytester, gate: Path
) -> None:
    baseline = pytester.path / "baseline.json"
    written = run(pytester, gate, 0.7, "--baseline", str(baseline), "--update-baseline")
    assert written.ret == pytest.ExitCode.OK
    result = run(pytester, gate, 0.9, "--baseline", str(baseline))
    assert result.ret == EXIT_DRIFT  # the claim holds: drift alone has its own exit code
    result.stdout.fnmatch_lines([
        f"FAILED baseline drift: {CLAIM} on organism (base->instruct): "
        "metric 0.7 -> 0.9 (change +0.2, tolerance 0.05)",
    ])
    result.assert_outcomes(passed=1)  # the claim itself holds: drift is a verdict of its own
    data = json.loads((pytester.path / "reports" / "claim_matrix.json").read_text())
    (rec,) = data["results"]
    assert (rec["verdict"], rec["drift"]["status"]) == ("PASS", "drift")
    html = (pytester.path / "reports" / "claim_matrix.html").read_text()
    assert 'data-drift="drift"' in html


def test_a_change_within_tolerance_passes(pytester: pytest.Pytester, gate: Path) -> None:
    baseline = pytester.path / "baseline.json"
    run(pytester, gate, 0.7, "--baseline", str(baseline), "--update-baseline")
    result = run(pytester, gate, 0.74, "--baseline", str(baseline))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]


def test_update_baseline_without_a_file_is_a_usage_error(
    pytester: pytest.Pytester, gate: Path
) -> None:
    result = run(pytester, gate, 0.7, "--update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--update-baseline needs --baseline FILE*"])


def _rec(metric: float | None, family: str = "organism") -> dict[str, object]:
    return {"claim_id": "a.b.c", "family": family, "pair": ["base", "sft"], "metric": metric,
            "control": 0.1, "verdict": "PASS"}


def test_compare_tells_ok_drift_new_and_unmeasured_apart() -> None:
    baseline = {result_key(_rec(0.5)): {"metric": 0.5, "control": 0.1}}
    tol = Tolerance.parse(None)
    ok, drift, new, skipped = compare(
        [_rec(0.52), _rec(0.6), _rec(0.5, family="tiny"), _rec(None)], baseline,
        lambda claim, family: tol,
    )
    assert (ok.status, drift.status, new.status, skipped.status) == ("ok", "drift", "new", "n/a")
    assert "metric 0.5 -> 0.6" in drift.message
    assert "tolerance 0.05" in drift.message
    assert [d.fails for d in (ok, drift, new, skipped)] == [False, True, True, False]


@pytest.mark.parametrize(
    ("raw", "old", "new", "allowed"),
    [(None, 0.8, 0.849, True), (None, 0.8, 0.86, False), (0, 1.0, 1.0, True),
     ("10%", 8.0, 8.8, True), ("10%", 8.0, 8.9, False), (0.1, float("nan"), 0.5, False)],
)
def test_tolerance_is_absolute_or_a_percentage_of_the_old_value(
    raw: float | str | None, old: float, new: float, allowed: bool
) -> None:
    assert Tolerance.parse(raw).allows(old, new) is allowed


@pytest.mark.parametrize("bad", [-0.1, "five", True])
def test_a_bad_tolerance_in_thresholds_is_a_config_error(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"claims": {CLAIM: {"op": ">=", "value": 0.5, "source": "s",
                                                       "tolerance": bad}}}))
    with pytest.raises(ConfigError, match="tolerance"):
        load_thresholds(path)


def test_a_family_can_override_the_tolerance(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"claims": {CLAIM: {
        "op": ">=", "value": 0.5, "source": "s", "tolerance": 0.02,
        "families": {"llama31": {"tolerance": "5%"}}}}}))
    thresholds = load_thresholds(path)
    assert thresholds.spec(CLAIM, "organism").tolerance == 0.02
    assert thresholds.spec(CLAIM, "llama31").tolerance == "5%"


def test_the_report_and_scale_out_options_are_in_help_with_defaults(
    pytester: pytest.Pytester,
) -> None:
    text = pytester.runpytest_subprocess("--help").stdout.str()
    group = text.split("mechtests: post-training claim tests", 1)[1]
    for option in ("--baseline", "--update-baseline", "--mechtests-dist", "--gpus-per-worker"):
        block = group.split(option, 1)[1].split("\n  --", 1)[0]
        assert "Default:" in block, f"{option} has no default in its help"
