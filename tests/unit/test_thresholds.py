from __future__ import annotations

from pathlib import Path

import pytest

from mechtests.claims.table import load_claims
from mechtests.claims.thresholds import load_thresholds
from mechtests.errors import ConfigError

GOOD = """
version: 1
claims:
  a.b.c:
    op: ">="
    value: 0.8
    control_margin: 0.1
    source: "docs/claims.md (claim 3)"
    families:
      fam2: {value: 0.5, source: "ours: measured"}
expected_failures:
  fam3: {a.b.c: "known: reason"}
"""

PRECONDITION = """    preconditions:
      - {quantity: own_ie, op: ">=", value: 0.1, why: "own vector steers", source: "ours"}
"""


def with_precondition(text: str) -> str:
    return GOOD.replace("    families:\n", text + "    families:\n")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.yaml"
    path.write_text(text)
    return path


def test_family_override_replaces_value_and_source(tmp_path: Path) -> None:
    th = load_thresholds(write(tmp_path, GOOD), claim_ids=["a.b.c"])
    assert th.spec("a.b.c", "fam1").value == 0.8
    assert th.spec("a.b.c", "fam2").value == 0.5
    assert th.spec("a.b.c", "fam2").source == "ours: measured"
    assert th.spec("a.b.c", "fam2").control is not None


def test_expected_failures_are_looked_up_per_family(tmp_path: Path) -> None:
    th = load_thresholds(write(tmp_path, GOOD), claim_ids=["a.b.c"])
    assert th.expected_failure("a.b.c", "fam3") == "known: reason"
    assert th.expected_failure("a.b.c", "fam1") is None


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (GOOD.replace('    source: "docs/claims.md (claim 3)"\n', ""), "missing 'source'"),
        (GOOD.replace('op: ">="', 'op: "=>"'), "has op '=>'"),
        (GOOD.replace("control_margin", "control_margn"), "unknown keys \\['control_margn'\\]"),
        (GOOD.replace("value: 0.8", "value: high"), "must be a number"),
        (with_precondition(PRECONDITION.replace('why: "own vector steers", ', "")),
         "preconditions\\[0\\] has keys .* expected exactly"),
        (with_precondition(PRECONDITION.replace('op: ">="', 'op: "=>"')), "op is '=>'.*Fix:"),
        (with_precondition(PRECONDITION.replace("value: 0.1", "value: .inf")),
         "value must be a finite number.*Fix:"),
        (with_precondition(PRECONDITION.replace('source: "ours"', 'source: ""')),
         "source must be a non-empty string.*Fix:"),
        (with_precondition("    preconditions: {quantity: own_ie}\n"),
         "a.b.c.preconditions must be a list.*Fix:"),
    ],
)
def test_bad_thresholds_name_the_key_and_the_fix(tmp_path: Path, broken: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_thresholds(write(tmp_path, broken), claim_ids=["a.b.c"])
    assert "thresholds.yaml" in str(info.value)


def test_a_threshold_for_an_unknown_claim_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names no known claim"):
        load_thresholds(write(tmp_path, GOOD), claim_ids=["other.claim.id"])


def test_every_packaged_claim_has_a_threshold_with_a_source() -> None:
    claims = load_claims()
    th = load_thresholds(claim_ids=[c.id for c in claims])
    for claim in claims:
        spec = th.spec(claim.id, "organism")
        assert spec.source
        assert spec.control is not None, f"{claim.id} has no control_margin"


def test_claim_ids_are_unique_sorted_and_have_known_areas() -> None:
    claims = load_claims()
    ids = [c.id for c in claims]
    assert ids == sorted(set(ids))
    assert {c.area for c in claims} <= {"knowledge", "crossmodel", "truth", "refusal", "confidence"}


def test_preconditions_are_read_with_their_reason_and_source(tmp_path: Path) -> None:
    th = load_thresholds(write(tmp_path, with_precondition(PRECONDITION)), claim_ids=["a.b.c"])
    (pre,) = th.spec("a.b.c", "fam1").preconditions
    assert (pre.quantity, pre.op, pre.value, pre.why, pre.source) == (
        "own_ie", ">=", 0.1, "own vector steers", "ours")


def test_a_family_override_replaces_the_preconditions(tmp_path: Path) -> None:
    text = with_precondition(PRECONDITION).replace(
        '{value: 0.5, source: "ours: measured"}', '{preconditions: []}')
    th = load_thresholds(write(tmp_path, text), claim_ids=["a.b.c"])
    assert th.spec("a.b.c", "fam1").preconditions
    assert th.spec("a.b.c", "fam2").preconditions == ()


def test_every_packaged_precondition_names_a_reason_and_a_source() -> None:
    claims = load_claims()
    th = load_thresholds(claim_ids=[c.id for c in claims])
    checked = [p for c in claims for p in th.spec(c.id, "organism").preconditions]
    assert {p.quantity for p in checked} >= {"own_ie", "baseline", "datasets_decidable",
                                              "min_pairs"}
    assert all(p.why and p.source for p in checked)
