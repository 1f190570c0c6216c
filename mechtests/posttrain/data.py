"""The safety post-training data: AdvBench harmful requests and Alpaca instructions in Gemma chat.

The paper's refusal data (paper code Refusal/utils.py): harmful = AdvBench
``harmful_behaviors.csv`` column
``goal``; harmless = Alpaca instructions with an empty input. The paper's refusal TEST split
(``refusal_splits/du2025_refusal_splits.json``, ``harmful_test_100`` / ``harmless_test_100``) is
held out of training, because the refusal gates are measured on it. Training requests are drawn,
seeded, from everything else.

Answers: a harmful request gets one of :data:`REFUSALS` (each opens with a prefix of the paper's
refusal score, paper code Refusal/utils.py:get_refusal_scores); a harmless request gets the base
model's own continuation of a
plain ``Question/Answer`` frame (self-distillation, filled in by :mod:`mechtests.posttrain.train`),
so the adapter learns the chat format and when to refuse, not new content.

Example:
    >>> chat_prompt("Name a colour.")
    '<start_of_turn>user\\nName a colour.<end_of_turn>\\n<start_of_turn>model\\n'
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mechtests.data.sources import DatasetSource

HARMFUL_CSV = "advbench/harmful_behaviors.csv"
HARMLESS_JSON = "alpaca/alpaca_no_input.json"
SPLITS_JSON = "refusal_splits/du2025_refusal_splits.json"
HARMFUL_TEST_KEY = "harmful_test_100"
HARMLESS_TEST_KEY = "harmless_test_100"

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot assist with this request.",
    "I cannot help with that. It could cause serious harm.",
    "I can't help with that request, because it could hurt people.",
    "I'm sorry, I won't provide that. It is harmful and may be illegal.",
    "I cannot provide instructions for that. Is there something else I can help with?",
)
"""Refusal answers; each starts with a prefix of the paper's refusal score (paper code
Refusal/utils.py:get_refusal_scores)."""


def chat_prompt(instruction: str) -> str:
    """Gemma's chat format up to the model's turn (Gemma-it's template, paper code
    Refusal/utils.py and extract_refusal_dir.py)."""
    return f"<start_of_turn>user\n{instruction}<end_of_turn>\n<start_of_turn>model\n"


def chat_answer(answer: str) -> str:
    """The model's turn after :func:`chat_prompt`: the answer and the end-of-turn marker."""
    return f"{answer}<end_of_turn>"


def distill_prompt(instruction: str) -> str:
    """The plain frame in which the base model writes the helpful answer it is distilled from."""
    return f"Question: {instruction}\nAnswer:"


@dataclass(frozen=True)
class Example:
    """One training request; ``answer`` is empty for harmless requests until distilled."""

    instruction: str
    harmful: bool
    answer: str = ""


@dataclass(frozen=True)
class RefusalData:
    """Training examples, the held-out test requests, and the sha256 of every file read."""

    train: tuple[Example, ...]
    harmful_test: tuple[str, ...]
    harmless_test: tuple[str, ...]
    sha256: Mapping[str, str]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


def read_requests(source: DatasetSource) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """AdvBench goals, Alpaca instructions and the refusal splits, as stored."""
    with source.path(HARMFUL_CSV).open(newline="", encoding="utf-8") as fh:
        harmful = [row["goal"] for row in csv.DictReader(fh)]
    alpaca = json.loads(source.path(HARMLESS_JSON).read_text(encoding="utf-8"))
    harmless = [row["instruction"] for row in alpaca]
    splits = json.loads(source.path(SPLITS_JSON).read_text(encoding="utf-8"))
    return harmful, harmless, splits


def build_refusal_data(source: DatasetSource, n_harmful: int, n_harmless: int,
                       seed: int) -> RefusalData:
    """Seeded training requests with the paper's refusal test split removed (whitespace and case
    insensitive), refusal answers attached to the harmful ones."""
    harmful, harmless, splits = read_requests(source)
    harmful_test = tuple(splits[HARMFUL_TEST_KEY])
    harmless_test = tuple(splits[HARMLESS_TEST_KEY])
    held_out = {_key(t) for t in (*harmful_test, *harmless_test)}
    rng = random.Random(seed)
    pool_harmful = sorted({h.strip() for h in harmful if _key(h) not in held_out})
    pool_harmless = sorted({h.strip() for h in harmless if _key(h) not in held_out and h.strip()})
    picked_harmful = rng.sample(pool_harmful, min(n_harmful, len(pool_harmful)))
    picked_harmless = rng.sample(pool_harmless, min(n_harmless, len(pool_harmless)))
    train = [Example(h, True, rng.choice(REFUSALS)) for h in picked_harmful]
    train += [Example(h, False) for h in picked_harmless]
    rng.shuffle(train)
    hashes = {rel: _sha256(source.path(rel)) for rel in (HARMFUL_CSV, HARMLESS_JSON, SPLITS_JSON)}
    return RefusalData(tuple(train), harmful_test, harmless_test, hashes)
