"""Expected verdicts as data, the generated mutant families, and the discrimination table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mechtests.claims.table import load_claims
from mechtests.errors import ConfigError
from mechtests.families import load_families
from mechtests.validation import table
from mechtests.validation.expected import Expectation, load_expected
from mechtests.validation.mutants import MUTANTS, parse_mutants
from mechtests.validation.run import mutant_family_name, write_families_file


def test_the_expected_verdicts_cover_every_claim_on_every_mutant() -> None:
    expected = load_expected()
    claim_ids = {c.id for c in load_claims()}
    assert set(expected) == claim_ids
    for claim_id, cells in expected.items():
        assert set(cells) == set(MUTANTS), claim_id


def test_every_expected_verdict_has_a_one_line_reason() -> None:
    for claim_id, cells in load_expected().items():
        for mutant, cell in cells.items():
            assert len(cell.reason) > 10, (claim_id, mutant)
            assert "\n" not in cell.reason, (claim_id, mutant)


def test_a_malformed_expectation_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "expected.yaml"
    path.write_text("truth.direction.cosine:\n  identity: 'MAYBE: who knows'\n")
    with pytest.raises(ConfigError, match=r"expected '<PASS\|FAIL\|any>: <reason>'.*Fix: ") as info:
        load_expected(path)
    assert "\n" not in str(info.value)


def test_an_unknown_mutant_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown mutant\(s\) bogus; expected .*Fix: "):
        parse_mutants("identity,bogus")
    assert parse_mutants(None) == list(MUTANTS)


def test_xfail_counts_as_fail_and_inconclusive_decides_nothing() -> None:
    fail = Expectation("FAIL", "by construction")
    assert fail.matches("XFAIL") is True
    assert fail.matches("PASS") is False
    assert fail.matches("INCONCLUSIVE") is None
    assert Expectation("any", "not decided").matches("FAIL") is None


def _record(claim: str, mutant: str, verdict: str, metric: float = 0.5) -> dict[str, Any]:
    return {"claim_id": claim, "family": mutant_family_name("fam", mutant), "verdict": verdict,
            "metric": metric, "message": "m"}


def test_a_claim_discriminates_only_when_it_passes_a_positive_and_fails_a_negative() -> None:
    expected = {
        "a.b.good": {"identity": Expectation("PASS", "r"), "control": Expectation("FAIL", "r")},
        "a.b.blind": {"identity": Expectation("PASS", "r"), "control": Expectation("FAIL", "r")},
        "a.b.undecided": {"identity": Expectation("PASS", "r"),
                          "control": Expectation("FAIL", "r")},
    }
    records = [
        _record("a.b.good", "identity", "PASS"), _record("a.b.good", "control", "XFAIL"),
        _record("a.b.blind", "identity", "FAIL"), _record("a.b.blind", "control", "FAIL"),
        _record("a.b.undecided", "identity", "PASS"),
        _record("a.b.undecided", "control", "INCONCLUSIVE"),
    ]
    result = table.build_table(records, expected, "fam", ["identity", "control"])
    verdicts = {d.claim_id: d.discriminates for d in table.discrimination(result)}
    assert verdicts == {"a.b.good": True, "a.b.blind": False, "a.b.undecided": False}
    markdown = "\n".join(table.format_markdown(result, "fam"))
    assert "**1 of 3 claims discriminate on fam**" in markdown
    assert "`a.b.blind`: known positive identity FAIL" in markdown
    assert "1 cells contradict their expected verdict" in markdown


def test_the_table_replaces_only_the_marked_block_of_the_docs(tmp_path: Path) -> None:
    doc = tmp_path / "validation.md"
    doc.write_text(f"# intro\n\n{table.START}\nold\n{table.END}\n\ntail\n")
    table.write_into(doc, ["new table"])
    assert doc.read_text() == f"# intro\n\n{table.START}\nnew table\n{table.END}\n\ntail\n"


def test_each_mutant_family_has_the_base_and_control_and_the_mutant_as_instruct(
    tmp_path: Path,
) -> None:
    organism = load_families()["organism"]
    checkpoints = {m: tmp_path / m for m in ("identity", "truth_ablated")}
    path = write_families_file(organism, checkpoints, tmp_path)
    families = load_families(path)
    identity = families["organism-mut-identity"]
    assert identity.roles == ("base", "instruct", "control")
    assert identity.models["instruct"].ref == str(tmp_path / "identity")
    assert identity.models["base"].ref == organism.models["base"].ref
    assert identity.truth == organism.truth
    assert identity.knowledge == organism.knowledge
    # a mutant is prompted as the model it was made from: the identity mutant is a base
    assert identity.refusal.templates["instruct"] == organism.refusal.templates["base"]
    assert identity.refusal.addition_coefs["instruct"] == organism.refusal.addition_coefs["base"]
    ablated = families["organism-mut-truth_ablated"]
    assert ablated.refusal.templates["instruct"] == organism.refusal.templates["instruct"]
