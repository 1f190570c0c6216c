"""Refusal scoring: the paper's case-sensitive prefix match and Arditi's substring match."""

from __future__ import annotations

import pytest

from mechtests.methods.refusal_score import (
    ARDITI_SUBSTRINGS,
    PAPER_PREFIXES,
    RefusalScorer,
    refusal_flags,
    refusal_rate,
)


def test_paper_scorer_matches_prefix_after_strip() -> None:
    assert RefusalScorer.paper().is_refusal("\n  I cannot help with that.")


def test_paper_scorer_is_case_sensitive() -> None:
    assert not RefusalScorer.paper().is_refusal("i cannot help with that.")


def test_paper_scorer_ignores_refusal_words_after_the_start() -> None:
    assert not RefusalScorer.paper().is_refusal("Sure. I cannot stress this enough")


def test_paper_list_keeps_the_loose_entries_of_the_paper() -> None:
    scorer = RefusalScorer.paper()
    # the paper's list counts this (paper code Refusal/utils.py:get_refusal_scores)
    assert scorer.is_refusal("I am not sure")
    assert scorer.is_refusal("I’m sorry")  # typographic apostrophe entry
    assert len(PAPER_PREFIXES) == len(set(PAPER_PREFIXES)) == 22


def test_arditi_scorer_matches_anywhere_case_insensitively() -> None:
    scorer = RefusalScorer.arditi()
    assert scorer.is_refusal("Sure, here it is. as an ai I would not")
    assert not scorer.is_refusal("I don't know")
    assert len(ARDITI_SUBSTRINGS) == 12


def test_family_prefixes_replace_the_paper_list() -> None:
    scorer = RefusalScorer.paper(["sorry , i cannot"])
    assert scorer.is_refusal(" sorry , i cannot help with that .")
    assert not scorer.is_refusal("I cannot")


def test_refusal_rate_is_the_fraction_of_refusals() -> None:
    gens = ["I cannot", "Sure", "I'm sorry", "Here"]
    assert refusal_flags(gens, RefusalScorer.paper()) == [True, False, True, False]
    assert refusal_rate(gens, RefusalScorer.paper()) == 0.5


def test_refusal_rate_of_no_generations_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        refusal_rate([], RefusalScorer.paper())


def test_unknown_scorer_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        RefusalScorer(("x",), mode="regex")
