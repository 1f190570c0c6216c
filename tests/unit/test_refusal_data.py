"""Refusal data: AdvBench / Alpaca loaders, the paper's seeded split, templates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mechtests.data.refusal import (
    build_paper_splits,
    format_prompts,
    load_advbench,
    load_alpaca_no_input,
    load_refusal_splits,
    paper_split,
    read_splits_json,
    template_suffix,
)
from mechtests.data.sources import DatasetSource
from mechtests.errors import ConfigError, DatasetError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def test_paper_split_takes_the_first_ceil_fifth_of_the_permutation_as_test() -> None:
    items = list(range(11))
    train, test = paper_split(items)
    perm = np.random.RandomState(42).permutation(11)
    assert test == [int(i) for i in perm[:3]]  # ceil(0.2 * 11) = 3
    assert train == [int(i) for i in perm[3:]]


def test_paper_split_sizes_match_the_paper() -> None:
    train, test = paper_split(list(range(520)))
    assert (len(train), len(test)) == (416, 104)
    train, test = paper_split(list(range(31323)))
    assert (len(train), len(test)) == (25058, 6265)


def test_advbench_loader_reads_the_goal_column(tmp_path: Path) -> None:
    path = tmp_path / "harmful_behaviors.csv"
    path.write_text('goal,target\n"Do x, badly",Sure\nDo y,Sure\n')
    assert load_advbench(path) == ["Do x, badly", "Do y"]


def test_advbench_without_goal_column_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("prompt\nx\n")
    with pytest.raises(DatasetError, match="goal"):
        load_advbench(path)


def test_alpaca_loader_keeps_rows_without_input(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    rows = [{"instruction": "a", "input": ""}, {"instruction": "b", "input": "ctx"},
            {"instruction": "c", "input": "  "}, {"instruction": "d"}]
    path.write_text(json.dumps(rows))
    assert load_alpaca_no_input(path) == ["a", "c", "d"]


def test_missing_split_file_keys_are_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"harmful_train_128": ["x"]}))
    with pytest.raises(DatasetError, match="harmless_train_128"):
        read_splits_json(path)


def test_splits_load_from_a_dataset_source(tmp_path: Path) -> None:
    (tmp_path / "refusal_splits").mkdir()
    body = {k: [f"{k}-{i}" for i in range(3)] for k in
            ("harmful_train_128", "harmless_train_128", "harmful_test_100", "harmless_test_100")}
    (tmp_path / "refusal_splits" / "du2025_refusal_splits.json").write_text(json.dumps(body))
    splits = load_refusal_splits(DatasetSource("paper", tmp_path))
    assert splits.harmless_test == ("harmless_test_100-0", "harmless_test_100-1",
                                    "harmless_test_100-2")


def test_templates_put_the_instruction_in_place() -> None:
    template = "User: {instruction}\nAssistant:"
    assert format_prompts(template, ["Say {hi}"]) == ["User: Say {hi}\nAssistant:"]
    assert template_suffix(template) == "\nAssistant:"


def test_template_without_instruction_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="instruction"):
        format_prompts("User: {prompt}", ["x"])


@pytest.mark.paper_data("refusal_splits", "advbench", "alpaca")
def test_reimplemented_split_reproduces_the_published_refusal_splits() -> None:
    rebuilt = build_paper_splits(SHARED / "advbench" / "harmful_behaviors.csv",
                                 SHARED / "alpaca" / "alpaca_no_input.json")
    published = read_splits_json(SHARED / "refusal_splits" / "du2025_refusal_splits.json")
    assert rebuilt == published
