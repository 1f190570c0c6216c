"""The cheapest part of `mechtests validate`, end to end on the shipped organism (CI tier).

The identity and control mutants need no direction (bitwise copies), and the two claims read
activations and weights only: truth.direction.cosine and confidence.entropy_neurons.overlap.
Each must PASS on identity and FAIL on control.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mechtests.cli import main


@pytest.mark.validation
def test_identity_and_control_mutants_separate_two_fast_claims_on_the_organism(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "validation.md"
    status = main([
        "validate", "--mutants", "identity,control", "--work-dir", str(tmp_path / "work"),
        "--out", str(doc), "-k", "truth.direction.cosine or entropy_neurons.overlap",
    ])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "2 of 2 claims discriminate on organism." in printed
    text = doc.read_text()
    assert "| `truth.direction.cosine` | PASS / PASS" in text
    assert "| `confidence.entropy_neurons.overlap` | PASS / PASS" in text
    assert text.count("FAIL / FAIL") == 2
