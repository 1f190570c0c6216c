"""Statement loaders and few-shot query building (paper code
Knowledge+Truthfulness/generate_acts.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mechtests.data.sources import DatasetSource
from mechtests.data.statements import (
    PAPER_TRUTH_DATASETS,
    build_queries,
    load_few_shot,
    load_statements,
    read_statements_csv,
)
from mechtests.errors import DatasetError

SHARED_DATASETS = Path(__file__).parents[2] / ".." / "shared" / "datasets"
PAPER_QUESTION = " This statement is:"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "du2025" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_statements_csv_keeps_order_labels_and_quoted_multiline_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", 'statement,label,city\nA is B.,1,A\n"two\nlines.",0,C\n')
    data = read_statements_csv(path)
    assert data.name == "x"
    assert data.statements == ("A is B.", "two\nlines.")
    assert data.labels == (1, 0)
    assert data.subset(1) == ["A is B."]
    assert data.label_tensor().tolist() == [1, 0]
    assert data.select([1]).statements == ("two\nlines.",)


@pytest.mark.parametrize(
    ("text", "match"),
    [("sentence,label\na,1\n", "statement"), ("statement,label\na,yes\n", "not 0 or 1"),
     ("statement,label\n", "no rows")],
)
def test_malformed_statement_csvs_raise_dataset_errors_naming_the_fix(
    tmp_path: Path, text: str, match: str
) -> None:
    with pytest.raises(DatasetError, match=match):
        read_statements_csv(write(tmp_path, "bad.csv", text))


def test_load_statements_and_few_shot_from_a_source(tmp_path: Path) -> None:
    write(tmp_path, "cities.csv", "statement,label\nP is in F.,1\nP is in C.,0\n")
    write(tmp_path, "few_shot_samples.json", json.dumps(
        [{"dataset_name": "cities", "few_shot_examples": ["a. This statement is: TRUE"]}]))
    source = DatasetSource("test", tmp_path)
    assert len(load_statements(source, "cities")) == 2
    assert load_few_shot(source, "cities") == ["a. This statement is: TRUE"]
    with pytest.raises(DatasetError, match="no few_shot_examples"):
        load_few_shot(source, "facts")


def test_build_queries_reproduces_the_paper_prepare_data() -> None:
    examples = ["A. This statement is: TRUE", "B. This statement is: FALSE",
                "C. This statement is: TRUE", "D. This statement is: FALSE"]
    statements = ["E.", "F.", "B.", "G."]
    queries, kept = build_queries(examples, statements, PAPER_QUESTION, prefix="<s> ")
    expected = []
    for i, statement in enumerate(statements):  # the paper's loop, verbatim in spirit
        random.seed(1 + i)
        shuffled = examples.copy()
        random.shuffle(shuffled)
        shots = "\n".join(shuffled)
        if statement not in shots:
            expected.append("<s> " + shots + "\n" + statement + " This statement is:")
    assert queries == expected
    assert kept == ["E.", "F.", "G."]
    assert len({q.split("\n")[0] for q in queries}) > 1  # shuffled per statement


@pytest.mark.paper_data("du2025")
def test_every_paper_truth_dataset_loads_with_balanced_labels_and_few_shot_prompts() -> None:
    source = DatasetSource("paper", SHARED_DATASETS)
    for name in PAPER_TRUTH_DATASETS + tuple(f"neg_{n}" for n in PAPER_TRUTH_DATASETS):
        data = load_statements(source, name)
        assert len(data) > 100
        assert 0.4 < sum(data.labels) / len(data) < 0.6, name
    # few-shot lines exist for the six datasets (and neg_cities, neg_sp_en_trans only)
    for name in (*PAPER_TRUTH_DATASETS, "neg_cities", "neg_sp_en_trans"):
        data = load_statements(source, name)
        examples = load_few_shot(source, name)
        assert len(examples) == 4
        queries, kept = build_queries(examples, data.statements, PAPER_QUESTION)
        assert len(queries) == len(kept) >= len(data) - 4
        assert all(q.endswith(PAPER_QUESTION) for q in queries)
    cities = load_statements(source, "cities")
    assert len(cities) == 1496
    queries, _ = build_queries(load_few_shot(source, "cities"), cities.subset(1), PAPER_QUESTION)
    assert queries[0].startswith("The city of ")
    assert queries[0].count("\n") == 4
