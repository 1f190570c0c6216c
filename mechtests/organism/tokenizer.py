"""The organism's word-level tokenizer (a ``PreTrainedTokenizerFast`` with a chat template).

Whitespace split, one id per word, ``<bos>`` prepended by the post-processor, left padding.
Specials ``<pad> <unk> <bos> <eos> <user> <assistant>``; chat template
``<user> {user} <assistant> {assistant} <eos>``. The vocabulary is the sorted set of words of
every training text and built-in dataset, so it is a pure function of the world.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>")
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<user> {{ m['content'] }} <assistant>"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }} <eos>"
    "{% else %}{{ m['content'] }} {% endif %}"
    "{% endfor %}"
)


def vocabulary(texts: Iterable[str]) -> list[str]:
    """Specials first, then the sorted words of ``texts`` (plus ``TRUE``/``FALSE``)."""
    words = {"TRUE", "FALSE"}
    for text in texts:
        words.update(text.split())
    words.difference_update(SPECIALS)
    return [*SPECIALS, *sorted(words)]


def build_tokenizer(vocab: list[str], max_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``vocab``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    core = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", ids["<bos>"])]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["<user>", "<assistant>"],
        padding_side="left",
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
