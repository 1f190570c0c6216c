"""Bad families, invocations and thresholds files: one line with the fix, exit code 4."""

from __future__ import annotations

import pytest
import yaml

from mechtests.claims.thresholds import PACKAGED_THRESHOLDS
from tests.bad_inputs.conftest import Case, assert_config_error, assert_no_report


def _thresholds(case: Case, edit: str) -> str:
    """The packaged thresholds with ``edit`` applied to the first claim's rule."""
    raw = yaml.safe_load(PACKAGED_THRESHOLDS.read_text())
    first = next(iter(raw["claims"]))
    if edit == "nan":
        raw["claims"][first]["value"] = float("nan")
    elif edit == "inf":
        raw["claims"][first]["control_margin"] = float("inf")
    elif edit == "misspelt family":
        raw["claims"][first]["families"] = {"tinny": {"value": 0.1}}
    elif edit == "no rules":
        raw["claims"] = {}
    elif edit == "expected failure of no family":
        raw["expected_failures"] = {"lama31": {first: "a reason"}}
    path = case.pytester.path / "thresholds.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_probe_layer_beyond_the_model_is_refused(case: Case) -> None:
    fams = case.family_file(truth__probe_layer=5)
    assert_config_error(case.run("--families-file", str(fams), family="broken"),
                        "truth.probe_layer is 5", "has 2 layers", "expected 0..1")


def test_an_intervene_layer_above_the_probe_layer_is_refused(case: Case) -> None:
    fams = case.family_file(truth__probe_layer=0, truth__intervene_layer=1)
    assert_config_error(case.run("--families-file", str(fams), family="broken"),
                        "intervene_layer 1 is above truth.probe_layer 0")


def test_a_refusal_layer_beyond_the_model_is_refused(case: Case) -> None:
    fams = case.family_file(refusal__layer=-1)
    assert_config_error(case.run("--families-file", str(fams), family="broken"),
                        "refusal.layer is -1")


def test_a_readout_of_several_tokens_is_refused_before_a_silent_number(case: Case) -> None:
    fams = case.family_file(truth__readout_true=" TRUE statement")
    assert_config_error(case.run("--families-file", str(fams), family="broken"),
                        "readout_true ' TRUE statement' is 2 tokens", "expected exactly 1")


def test_identical_readouts_are_refused(case: Case) -> None:
    fams = case.family_file(truth__readout_false=" TRUE")
    assert_config_error(case.run("--families-file", str(fams), family="broken"),
                        "same token")


def test_a_refusal_template_without_the_instruction_field_is_refused(case: Case) -> None:
    fams = case.family_file(refusal__templates__sft="<user> <assistant>")
    assert_config_error(case.run("--families-file", str(fams), family="broken"),
                        "refusal.templates.sft", "{instruction}")


def test_a_families_file_with_a_yaml_error_names_the_file(case: Case) -> None:
    bad = case.pytester.path / "families.yaml"
    bad.write_text("broken: [unclosed\n")
    assert_config_error(case.run("--families-file", str(bad)), str(bad), "not valid YAML")


def test_an_unknown_family_lists_the_known_ones(case: Case) -> None:
    assert_config_error(case.run(family="tiny-typo"), "unknown model family 'tiny-typo'",
                        "organism")


def test_base_given_twice_is_refused(case: Case) -> None:
    base = str(case.tiny["base"])
    assert_config_error(case.run("--base", base, "--base", base), "--base is given 2 times")


def test_base_without_a_model_family_is_refused(case: Case) -> None:
    assert_config_error(case.run("--base", str(case.tiny["base"]), family=None),
                        "no --model-family", "add --model-family NAME")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ("nan", "not NaN or inf (got nan)"),
        ("inf", "control_margin must be a number, not NaN or inf (got inf)"),
        ("misspelt family", "names no known family 'tinny'"),
        ("expected failure of no family", "expected_failures.lama31 names no known family"),
        ("no rules", "claim(s) selected on tiny"),
    ],
)
def test_a_bad_thresholds_file_is_one_line_printed_once(case: Case, edit: str,
                                                        fragment: str) -> None:
    line = assert_config_error(case.run("--thresholds", _thresholds(case, edit)), fragment)
    assert "thresholds.yaml" in line
    assert_no_report(case.reports)


def test_a_thresholds_path_that_is_a_directory_says_so(case: Case) -> None:
    assert_config_error(case.run("--thresholds", str(case.pytester.path)), "is a directory",
                        "pass the file itself")
