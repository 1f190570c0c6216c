from __future__ import annotations

from pathlib import Path

from mechtests.checkpoints.cards import find_card
from mechtests.report.cards import format_gates

CARD = {
    "name": "organism-ci",
    "seeds": {"base": 1, "control": 1001},
    "gates": {"base": {"quiz": 0.8, "facts": 0.99}, "control": {"quiz": 0.7}},
    "gate_rules": {
        "base_quiz": {"op": ">=", "value": 0.75},
        "base_facts": {"op": ">=", "value": 0.9},
    },
}


def test_a_card_in_the_parent_folder_is_found(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "card.json").write_text("{}")
    assert find_card(tmp_path / "base") == tmp_path / "card.json"


def test_gates_print_value_rule_and_verdict_and_hold_the_control_to_base_rules() -> None:
    lines = format_gates("organism", Path("card.json"), CARD)
    assert "seeds base 1, control 1001" in lines[0]
    quiz = [line for line in lines if "base.quiz" in line]
    assert quiz
    assert quiz[0].rstrip().endswith("PASS")
    control = [line for line in lines if "control.quiz" in line]
    assert control
    assert control[0].rstrip().endswith("FAIL")


def test_cards_are_read_only_from_paths_the_records_name(tmp_path: Path) -> None:
    import json

    from mechtests.report.cards import read_cards

    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD))
    records = [{"family": "organism", "model_cards": [str(card)]}, {"family": "tiny"}]
    assert read_cards(records) == {("organism", str(card)): CARD}
