"""The word-level tokenizer shared by every checkpoint the suite builds itself.

The organism, the ``tiny`` random checkpoints and the real-shape timing families all use one
``PreTrainedTokenizerFast``: whitespace split (optionally then chunks of ``chunk`` characters,
so real-shape prompts reach real token lengths), one id per word, ``<bos>`` prepended by the
post-processor, left padding, specials ``<pad> <unk> <bos> <eos> <user> <assistant>`` and the
chat template ``<user> {user} <assistant> {assistant} <eos>``.

Example:
    >>> tok = build_word_tokenizer([*SPECIALS, "hello", "world"], 64)  # doctest: +SKIP
    >>> tok("hello world")["input_ids"]                                 # doctest: +SKIP
    [2, 6, 7]
"""

from __future__ import annotations

from typing import Any

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>")
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<user> {{ m['content'] }} <assistant>"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }} <eos>"
    "{% else %}{{ m['content'] }} {% endif %}"
    "{% endfor %}"
)


def build_word_tokenizer(vocab: list[str], max_length: int, chunk: int | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``vocab`` (which must start with
    :data:`SPECIALS`); ``chunk`` splits each word further into pieces of that many characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    core = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    if chunk is None:
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        core.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(f".{{1,{chunk}}}"), behavior="isolated"),
        ])
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", ids["<bos>"])]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens=["<user>", "<assistant>"], padding_side="left",
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
