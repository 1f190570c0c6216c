"""Tiny random-weight checkpoints, built on demand: the ``tiny:<arch>/<role>`` scheme.

A tiny checkpoint is a 2-layer causal LM of one of the supported architectures (hidden 64,
4 heads, 2 key/value heads, MLP 128, 256 positions) with random weights and a word-level
tokenizer. It exists to test plumbing (hooks, caches, backends, the pytest plugin) on any
machine in seconds; verdicts measured on it mean nothing.

The four roles mirror a real family: ``base`` is a seeded random init (seed 0), ``sft`` and
``instruct`` are the base weights plus Gaussian noise of 0.05 and 0.1 times each tensor's
standard deviation (seeds 1 and 2), and ``control`` is an independent init (seed 3).

Vocabulary: the specials ``<pad> <unk> <bos> <eos> <user> <assistant>`` then the sorted,
case-preserving, whitespace-separated words of the built-in datasets
(``mechtests/fixtures/organism/datasets/**/*.{csv,json}``) when that folder exists, else a fixed
fallback list; the readout words of the truth prompts (``TRUE``, ``FALSE``, ``:`` ...) are always
present. The tokenizer splits on whitespace and adds ``<bos>`` in front.

Builds are deterministic, happen once per cache directory under a file lock, and are atomic
(written to a temporary directory, then renamed). The directory name hashes the architecture,
the config, the vocabulary and :data:`CODE_VERSION`, so a changed dataset or builder gives a new
checkpoint instead of a stale one.

Example:
    >>> path = resolve("llama/base", Path(".mechtests_cache"))            # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())                           # doctest: +SKIP
    ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', ...]
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechtests.checkpoints.atomic import atomic_directory
from mechtests.engine.word_tokenizer import SPECIALS, build_word_tokenizer
from mechtests.errors import CheckpointError

CODE_VERSION = "1"
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
ROLES = ("base", "sft", "instruct", "control")
REQUIRED_WORDS = ("TRUE", "FALSE", ":", "this", "statement", "is")
DATASETS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "organism" / "datasets"
FALLBACK_WORDS = (
    "The", "the", "a", "an", "of", "in", "is", "not", "capital", "city", "country", "located",
    "Paris", "France", "Berlin", "Germany", "Rome", "Italy", "Madrid", "Spain", "Tokyo", "Japan",
    "animal", "mammal", "bird", "fish", "element", "symbol", "invented", "by", "word", "means",
    "How", "do", "I", "make", "a", "cake", "bomb", "Sorry", "cannot", "help", "with", "that",
    "Sure", "here", "TRUE", "FALSE", ":", ".", ",", "?", "this", "statement", "is", "and",
)
# Per-architecture config keywords on top of the shared shape; a declarative table.
_SHARED: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "head_dim": 16,
    "tie_word_embeddings": False,
}
_ARCH_CONFIG: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"use_sliding_window": False}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "query_pre_attn_scalar": 16,
            "sliding_window": 128,
            "hidden_activation": "gelu_pytorch_tanh",
        },
    ),
    # Gemma-3: a 4-token sliding window on layer 0 (shorter than the test prompts, so the
    # window matters), then a global layer; q/k norms and the embedding scale are built in.
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            "query_pre_attn_scalar": 16,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
            "hidden_activation": "gelu_pytorch_tanh",
        },
    ),
}
_SEEDS = {"base": 0, "sft": 1, "instruct": 2, "control": 3}
_NOISE = {"sft": 0.05, "instruct": 0.1}


def resolve(rest: str, cache_dir: Path) -> Path:
    """The local directory of ``tiny:<rest>`` (``<arch>/<role>``), building it when missing."""
    arch, sep, role = rest.partition("/")
    if not sep or arch not in ARCHS or role not in ROLES:
        raise CheckpointError(
            f"tiny checkpoint reference 'tiny:{rest}' is malformed; expected "
            f"'tiny:<arch>/<role>' with arch in {', '.join(ARCHS)} and role in "
            f"{', '.join(ROLES)}. Fix: e.g. 'tiny:llama/base'."
        )
    vocab = build_vocab()
    config = model_config_kwargs(arch, vocab)
    key = hashlib.sha256(
        json.dumps({"arch": arch, "config": config, "vocab": vocab, "code": CODE_VERSION},
                   sort_keys=True).encode()
    ).hexdigest()[:16]
    root = Path(cache_dir) / "tiny" / f"{arch}-{key}"
    if not (root / role / "config.json").is_file():
        _build_locked(arch, vocab, config, root)
    return root / role


def model_type(arch: str) -> str:
    """``config.json``'s ``model_type`` of the tiny ``arch`` (``gemma3`` -> ``gemma3_text``)."""
    import transformers

    return str(getattr(transformers, _ARCH_CONFIG[arch][0]).model_type)


def build_vocab() -> list[str]:
    """Specials, then the sorted words of the built-in datasets (or the fallback list)."""
    words = set(_dataset_words()) if DATASETS_DIR.is_dir() else set(FALLBACK_WORDS)
    words.update(REQUIRED_WORDS)
    words.difference_update(SPECIALS)
    return [*SPECIALS, *sorted(words)]


def model_config_kwargs(arch: str, vocab: list[str]) -> dict[str, Any]:
    """The config keywords of ``arch``'s tiny model (JSON-able; hashed into the cache key)."""
    ids = {tok: i for i, tok in enumerate(vocab)}
    extra = _ARCH_CONFIG[arch][2]
    return {
        **_SHARED,
        **extra,
        "vocab_size": len(vocab),
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
    }


def _dataset_words() -> Iterator[str]:
    for path in sorted(DATASETS_DIR.rglob("*")):
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                for row in csv.reader(fh):
                    for cell in row:
                        yield from cell.split()
        elif path.suffix == ".json":
            yield from _json_words(json.loads(path.read_text(encoding="utf-8")))


def _json_words(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield from node.split()
    elif isinstance(node, dict):
        for value in node.values():
            yield from _json_words(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_words(value)


def _build_locked(arch: str, vocab: list[str], config: dict[str, Any], root: Path) -> None:
    from filelock import FileLock

    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if all((root / role / "config.json").is_file() for role in ROLES):
            return
        with atomic_directory(root) as tmp:  # replaces a partial older layout
            _build(arch, vocab, config, tmp)


def _build(arch: str, vocab: list[str], config: dict[str, Any], out: Path) -> None:
    import torch
    import transformers

    config_name, model_name, _ = _ARCH_CONFIG[arch]
    config_cls = getattr(transformers, config_name)
    model_cls = getattr(transformers, model_name)
    tokenizer = build_tokenizer(vocab)
    hf_config = config_cls(**config)

    def init(seed: int) -> Any:
        torch.manual_seed(seed)
        return model_cls(hf_config).eval()

    base = init(_SEEDS["base"])
    models = {"base": base, "control": init(_SEEDS["control"])}
    for role, scale in _NOISE.items():
        model = init(_SEEDS["base"])
        model.load_state_dict(base.state_dict())
        gen = torch.Generator().manual_seed(_SEEDS[role])
        with torch.no_grad():
            for param in model.parameters():
                std = float(param.float().std()) if param.numel() > 1 else 0.0
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                param.add_((scale * std * noise).to(param.dtype))
        models[role] = model
    from mechtests.engine import quiet_progress

    with quiet_progress():
        for role in ROLES:
            models[role].save_pretrained(out / role, safe_serialization=True)
            tokenizer.save_pretrained(out / role)


def build_tokenizer(vocab: list[str]) -> Any:
    """The suite's word-level tokenizer over ``vocab`` at the tiny models' context length."""
    return build_word_tokenizer(vocab, int(_SHARED["max_position_embeddings"]))
