"""Pair building and few-shot prompts for knowledge patching (paper code
Knowledge+Truthfulness/patching_process_data.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mechtests.data.pairs import (
    build_patching_set,
    build_tulu_set,
    last_word,
    read_tulu_pairs,
    split_examples,
)
from mechtests.errors import DatasetError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "du2025"
ORGANISM = Path(__file__).resolve().parents[2] / "fixtures" / "organism" / "datasets" / "du2025"
EXAMPLES = ["the city of oslo is in norway . Q : TRUE", "the city of rome is in italy . Q : TRUE",
            "the city of lima is in france . Q : FALSE", "the city of paris is in peru . Q : FALSE"]


class WordTok:
    """A deterministic word-level tokenizer with a BOS id 0."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        return [0] + [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]

    def text(self, i: int) -> str:
        return {v: k for k, v in self.vocab.items()}[i]


def test_last_word_ignores_punctuation() -> None:
    assert last_word("The city of Maracay is in Venezuela.") == "Venezuela"
    assert last_word("the city of fova is in rofuvir .") == "rofuvir"
    assert last_word("The Spanish word 'uno' means 'one'.") == "one"


def test_pairs_share_the_last_word_and_reuse_the_last_candidate_like_the_paper() -> None:
    tok = WordTok()
    statements = ["the city of a is in x .", "the city of b is in x .", "the city of c is in y .",
                  "the city of d is in x .", "the city of e is in x .", "the city of f is in y .",
                  "the city of g is in z ."]
    labels = [1, 1, 1, 0, 0, 0, 1]
    ps = build_patching_set("toy", statements, labels, EXAMPLES, " Q :", tok, tok.text)
    pairs = [(t.split("\n")[-1], f.split("\n")[-1]) for t, f in zip(ps.true_prompts,
                                                                      ps.false_prompts)]
    # x: two false candidates -> pop the last (e), then the remaining one (d); y: reuse f
    assert pairs == [("the city of a is in x . Q :", "the city of e is in x . Q :"),
                     ("the city of b is in x . Q :", "the city of d is in x . Q :"),
                     ("the city of c is in y . Q :", "the city of f is in y . Q :")]
    assert ps.columns == ("the", "city", "of", "[s1]", "is", "in", "[o1]", ".", "Q", ":")
    assert ps.subject_columns == (3,)
    assert ps.object_columns == (6,)
    assert ps.widths == (10, 10, 10)
    assert ps.first_diff_column == 3
    assert ps.last_subject_column == 3
    assert ps.knowledge_columns == (3, 6)


def test_statements_off_the_template_are_dropped() -> None:
    tok = WordTok()
    statements = ["the city of a is in x .", "the city of b is in x .",
                  "the town of c is in x .", "the city of d e is in x ."]
    ps = build_patching_set("toy", statements, [1, 0, 1, 0] * 1, EXAMPLES, " Q :", tok, tok.text,
                            template_share=0.6)
    assert len(ps) == 1
    assert "the city of a" in ps.true_prompts[0]
    with pytest.raises(DatasetError, match="no TRUE/FALSE pairs"):
        build_patching_set("toy", ["a x .", "b y ."], [1, 0], EXAMPLES, " Q :", tok)


def test_prompts_shuffle_true_examples_first_with_one_seeded_stream() -> None:
    tok = WordTok()
    statements = [f"the city of {s} is in x ." for s in "abcdef"]
    ps = build_patching_set("toy", statements, [1, 1, 1, 0, 0, 0], EXAMPLES, " Q :", tok)
    true_lines, false_lines = split_examples(EXAMPLES)
    lines = [e + "\n" for e in true_lines + false_lines]
    random.seed(1)  # the paper: random.seed(1) once, then random.shuffle per pair
    for t, f in zip(ps.true_prompts, ps.false_prompts):
        random.shuffle(lines)
        shots = "".join(lines)
        assert t.startswith(shots)
        assert f.startswith(shots)
        assert t.endswith(" . Q :")
        assert len(tok(t)) == len(tok(f))
    assert true_lines == EXAMPLES[:2]
    with pytest.raises(DatasetError, match="TRUE or FALSE"):
        split_examples(["no label here"])


def test_tulu_rows_pair_by_id_and_keep_equal_token_lengths(tmp_path: Path) -> None:
    path = tmp_path / "tulu.csv"
    path.write_text("id,statement,label\n1,a b c .,1\n1,a d c .,0\n2,x y .,1\n2,x y z .,0\n"
                    "3,p q r .,1\n3,s q t .,0\n")
    pairs = read_tulu_pairs(path)
    assert pairs[0] == ("a b c .", "a d c .")
    tok = WordTok()
    ps = build_tulu_set(pairs, EXAMPLES, " Q :", tok)
    assert len(ps) == 2
    assert ps.grouped
    assert ps.dropped == 0
    assert ps.diff_columns == ((1,), (0, 2))
    assert ps.widths == (6, 6)
    assert ps.columns == ("knowledge", "others", "last token")
    assert ps.select([1]).true_prompts == ps.true_prompts[1:]


def test_tulu_rows_out_of_order_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tulu.csv"
    path.write_text("id,statement,label\n1,a .,0\n1,b .,1\n")
    with pytest.raises(DatasetError, match="labels 1 then 0"):
        read_tulu_pairs(path)
    path.write_text("statement,label\na,1\n")
    with pytest.raises(DatasetError, match="id,statement,label"):
        read_tulu_pairs(path)


@pytest.mark.skipif(not (ORGANISM / "cities.csv").is_file(), reason="no built-in organism data")
def test_organism_cities_pair_by_country_with_one_subject_column() -> None:
    from mechtests.data.statements import read_statements_csv

    data = read_statements_csv(ORGANISM / "cities.csv")
    tok = WordTok()
    examples = ["the city of kashol is in vadrinil . this statement is : TRUE",
                "the city of gudro is in shupabal . this statement is : FALSE"]
    ps = build_patching_set("cities", data.statements, data.labels, examples,
                            " this statement is :", tok, tok.text)
    assert ps.columns == ("the", "city", "of", "[s1]", "is", "in", "[o1]", ".", "this",
                          "statement", "is", ":")
    for t, f in zip(ps.true_prompts, ps.false_prompts):
        assert last_word(t.split("\n")[-1][: -len(" this statement is :")]) == \
            last_word(f.split("\n")[-1][: -len(" this statement is :")])


@pytest.mark.paper_data("du2025/cities.csv")
def test_paper_cities_with_a_bpe_tokenizer_find_the_papers_layout() -> None:
    """A byte-level BPE trained here stands in for Llama-3's: the derived template is
    ``BOS The city of <city> is in <country> .`` as in patching_process_data.py."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mechtests.data.statements import read_statements_csv

    data = read_statements_csv(SHARED / "cities.csv")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(data.statements, trainers.BpeTrainer(vocab_size=600,
                                                                 special_tokens=["<s>"]))

    def tokenize(text: str) -> list[int]:
        return [0, *bpe.encode(text).ids]

    examples = ["The city of Dar es Salaam is in Tanzania. This statement is: TRUE",
                "The city of Dar es Salaam is in Italy. This statement is: FALSE"]
    ps = build_patching_set("cities", data.statements, data.labels, examples,
                            " This statement is:", tokenize, lambda i: bpe.id_to_token(i))
    assert len(ps) > 20
    assert ps.columns[:3] == ("The", "Ġcity", "Ġof") or ps.columns[1:3] == ("Ġcity", "Ġof")
    assert ps.subject_columns
    assert ps.object_columns
    assert max(ps.subject_columns) < min(ps.object_columns)
