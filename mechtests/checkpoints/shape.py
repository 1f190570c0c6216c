"""The ``shape:<family>[@<n_layers>]/<role>`` checkpoint scheme: real-shape random weights.

A ``shape:`` checkpoint is a directory with the ``config.json`` of a preset's real checkpoints
(``shapes.yaml``, read by :mod:`mechtests.families.shape`; depth optionally cut to
``n_layers``), a synthetic tokenizer and the marker file of
:mod:`mechtests.engine.random_weights`. It holds no weights: ``load_backend`` builds the model
with seeded random weights directly on the target device in the configured dtype, so an 8B
model is never written to disk and never copied through the CPU.

Synthetic tokenizer: word level over the built-in datasets' words, each word cut into chunks of
at most :data:`CHUNK` characters (one token per chunk), padded with filler tokens to the real
vocabulary size (the embedding and unembedding shapes must be the real ones). Chunking mimics
BPE on rare words: the organism's cities few-shot prompt is 76 tokens, the paper's Llama-3
cities prompt about 75 (docs/claims.md (claim 1)); whole words as tokens would give 61. Unknown text
(e.g. a preset's chat-template markers) becomes ``<unk>`` chunks of the same count.

Example:
    >>> path = resolve("llama31@2/base", Path(".cache"))                   # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())                             # doctest: +SKIP
    ['config.json', 'mechtests_random_weights.json', 'tokenizer.json', 'tokenizer_config.json']
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from mechtests.errors import CheckpointError
from mechtests.families.shape import Shape, find_shape, layer_count

__all__ = ["CHUNK", "build_tokenizer", "checkpoint_config", "resolve", "synthetic_vocab"]

CODE_VERSION = "1"
CHUNK = 5  # characters per synthetic token
ROLES = ("base", "sft", "instruct", "control")
SEEDS = {"base": 0, "sft": 1, "instruct": 2, "control": 3}
_REF = re.compile(r"^(?P<family>[A-Za-z0-9_.\-]+?)(@(?P<layers>\d+))?/(?P<role>[a-z]+)$")


def resolve(rest: str, cache_dir: Path) -> Path:
    """The local directory of ``shape:<rest>`` (``<family>[@<n_layers>]/<role>``), built when
    missing (config, tokenizer and marker only: a few MB, no weights)."""
    match = _REF.match(rest)
    if not match or match["role"] not in ROLES:
        raise CheckpointError(
            f"shape checkpoint reference 'shape:{rest}' is malformed; expected "
            f"'shape:<family>[@<n_layers>]/<role>' with role in {', '.join(ROLES)}. "
            "Fix: e.g. 'shape:llama31@2/base'."
        )
    shape = find_shape(match["family"])
    n = layer_count(shape, int(match["layers"]) if match["layers"] else None)
    role = match["role"]
    vocab = synthetic_vocab(int(shape.config["vocab_size"]))
    config = checkpoint_config(shape, n, vocab)
    key = hashlib.sha256(json.dumps({"config": config, "vocab": vocab, "code": CODE_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:16]
    out = Path(cache_dir) / "shape" / f"{shape.name}-L{n}-{key}" / role
    if not (out / "config.json").is_file():
        _build_locked(shape, role, config, vocab, out)
    return out


def checkpoint_config(shape: Shape, n_layers: int, vocab: list[str]) -> dict[str, Any]:
    """The ``config.json`` of ``shape`` cut to ``n_layers``, with the synthetic tokenizer's
    special token ids (JSON-able; hashed into the cache key)."""
    ids = {tok: i for i, tok in enumerate(vocab[:16])}
    config = {**shape.config, "num_hidden_layers": n_layers, "pad_token_id": ids["<pad>"],
              "bos_token_id": ids["<bos>"], "eos_token_id": ids["<eos>"], "use_cache": True}
    if shape.config.get("max_window_layers") is not None:  # Qwen2: keep it within the depth
        config["max_window_layers"] = min(int(shape.config["max_window_layers"]), n_layers)
    return config


def _build_locked(shape: Shape, role: str, config: dict[str, Any], vocab: list[str],
                  out: Path) -> None:
    from filelock import FileLock

    from mechtests.checkpoints.atomic import atomic_directory

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return
        with atomic_directory(out) as tmp:  # replaces an interrupted older build
            _build(shape, role, config, vocab, tmp)


def _build(shape: Shape, role: str, config: dict[str, Any], vocab: list[str], out: Path) -> None:
    from mechtests.engine import quiet_progress
    from mechtests.engine.random_weights import MARKER

    with quiet_progress():
        build_tokenizer(vocab, int(config.get("max_position_embeddings", 4096))).save_pretrained(
            out)
    (out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    marker = {"seed": SEEDS[role], "family": shape.name, "role": role, "source": shape.source,
              "n_layers": config["num_hidden_layers"], "real_layers": shape.n_layers,
              "note": "random weights in a real checkpoint's shape: timing and memory only"}
    (out / MARKER).write_text(json.dumps(marker, indent=1))


# -- tokenizer ----------------------------------------------------------------------------------
def _chunks(word: str) -> list[str]:
    return [word[i : i + CHUNK] for i in range(0, len(word), CHUNK)]


@cache
def synthetic_vocab(size: int) -> list[str]:
    """Specials, the chunks of the built-in datasets' words, then fillers up to ``size``."""
    from mechtests.engine.tiny import build_vocab
    from mechtests.engine.word_tokenizer import SPECIALS

    words = {c for w in build_vocab() if w not in SPECIALS for c in _chunks(w)}
    words.difference_update(SPECIALS)
    vocab = [*SPECIALS, *sorted(words)]
    if len(vocab) > size:
        vocab = vocab[:size]
    vocab += [f"<w{i}>" for i in range(len(vocab), size)]
    return vocab


def build_tokenizer(vocab: list[str], max_length: int = 4096) -> Any:
    """The suite's word-level tokenizer over ``vocab``, each word further split into chunks of
    :data:`CHUNK` characters; ``<user>`` and ``<assistant>`` are special."""
    from mechtests.engine.word_tokenizer import build_word_tokenizer

    return build_word_tokenizer(vocab, max_length, chunk=CHUNK)
