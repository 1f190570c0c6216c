"""Bad datasets, options and environment: one line with the fix, exit code 4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bad_inputs.conftest import Case, assert_config_error, assert_no_report


def _paper_family(case: Case) -> tuple[Path, Path]:
    """A tiny family reading the paper's layout from a private dataset copy."""
    return case.family_file(datasets="paper"), case.datasets()


def _run_paper(case: Case, fams: Path, data: Path, *args: str) -> pytest.RunResult:
    return case.run("--families-file", str(fams), "--mechtests-datasets", str(data), *args,
                    family="broken")


def test_a_held_out_set_with_one_label_is_refused(case: Case) -> None:
    fams, data = _paper_family(case)
    cities = data / "du2025" / "cities.csv"
    rows = cities.read_text().splitlines()
    cities.write_text("\n".join([rows[0], *[r for r in rows[1:] if ",1," in r]]) + "\n")
    assert_config_error(_run_paper(case, fams, data), "cities.csv", "only label [1]",
                        "true (1) and false (0)")


def test_a_statements_csv_without_a_label_column_is_refused(case: Case) -> None:
    fams, data = _paper_family(case)
    path = data / "du2025" / "facts.csv"
    path.write_text("statement,truth\nThe sky is blue.,1\n")
    assert_config_error(_run_paper(case, fams, data), "facts.csv", "expected at least",
                        "'label'")


def test_invalid_utf8_in_a_csv_names_the_file(case: Case) -> None:
    fams, data = _paper_family(case)
    path = data / "du2025" / "inventors.csv"
    path.write_bytes(path.read_bytes() + b"\xff\xfe bad bytes,1\n")
    assert_config_error(_run_paper(case, fams, data), "inventors.csv", "not UTF-8",
                        "re-save it as UTF-8")


def test_a_missing_dataset_file_names_the_layout(case: Case) -> None:
    fams, data = _paper_family(case)
    (data / "du2025" / "sp_en_trans.csv").unlink()
    assert_config_error(_run_paper(case, fams, data), "sp_en_trans.csv", "does not exist")


def test_refusal_splits_without_their_lists_are_refused(case: Case) -> None:
    fams, data = _paper_family(case)
    splits = data / "refusal_splits" / "du2025_refusal_splits.json"
    splits.write_text(json.dumps({"harmful_train": ["x"]}))
    assert_config_error(_run_paper(case, fams, data), "refusal splits", "harmless_train")


def test_few_shot_prompts_longer_than_the_context_window_are_refused(case: Case) -> None:
    fams, data = _paper_family(case)
    shots = data / "du2025" / "few_shot_samples.json"
    entries = json.loads(shots.read_text())
    for entry in entries:
        entry["few_shot_examples"] = [" ".join(["The"] * 60) + " TRUE"] * 6
    shots.write_text(json.dumps(entries))
    assert_config_error(_run_paper(case, fams, data), "max_position_embeddings 256",
                        "shorter few-shot examples")


def test_a_datasets_folder_that_does_not_exist_is_refused(case: Case) -> None:
    assert_config_error(case.run("--mechtests-datasets", str(case.pytester.path / "none")),
                        "is not a directory")


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_examples_below_one_is_refused(case: Case, value: str) -> None:
    assert_config_error(case.run("--max-examples", value), f"--max-examples is {value}",
                        "N >= 1")
    assert_no_report(case.reports)


def test_gpus_per_worker_below_one_is_refused(case: Case) -> None:
    assert_config_error(case.run("--gpus-per-worker", "0"), "--gpus-per-worker is 0")


def test_cuda_without_a_gpu_says_to_run_on_cpu_not_to_resave_the_checkpoint(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    line = assert_config_error(case.run("--mechtests-device", "cuda"), "no CUDA device",
                               "--mechtests-device cpu")
    assert "save_pretrained" not in line


def test_a_claim_report_that_is_a_file_is_refused_before_the_run(case: Case) -> None:
    report = case.pytester.path / "report.txt"
    report.write_text("keep me")
    assert_config_error(case.run("--claim-report", str(report)), "--claim-report",
                        "is a file")
    assert report.read_text() == "keep me"


def test_a_cache_that_cannot_be_created_is_refused(case: Case) -> None:
    blocker = case.pytester.path / "blocker"
    blocker.write_text("")
    assert_config_error(case.run("--mechtests-cache", str(blocker / "cache")),
                        "--mechtests-cache", "writable directory")
