"""The organism's word-level tokenizer (a ``PreTrainedTokenizerFast`` with a chat template).

Whitespace split, one id per word, ``<bos>`` prepended by the post-processor, left padding, the
specials and chat template of :mod:`mechtests.engine.word_tokenizer` (shared with the ``tiny``
checkpoints). The vocabulary is the sorted set of words of every training text and built-in
dataset, so it is a pure function of the world.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mechtests.engine.word_tokenizer import CHAT_TEMPLATE, SPECIALS, build_word_tokenizer

__all__ = ["CHAT_TEMPLATE", "SPECIALS", "build_tokenizer", "vocabulary"]


def vocabulary(texts: Iterable[str]) -> list[str]:
    """Specials first, then the sorted words of ``texts`` (plus ``TRUE``/``FALSE``)."""
    words = {"TRUE", "FALSE"}
    for text in texts:
        words.update(text.split())
    words.difference_update(SPECIALS)
    return [*SPECIALS, *sorted(words)]


def build_tokenizer(vocab: list[str], max_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``vocab`` with the organism's context length."""
    return build_word_tokenizer(vocab, max_length)
