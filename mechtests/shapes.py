"""Real-shape random-weight families: the ``shape:<family>[@<n_layers>]/<role>`` scheme.

Performance at real scale does not depend on weight values. ``shapes.yaml`` records, for each
preset family, the architecture of its real checkpoints (facts from their public config.json
files); a ``shape:`` checkpoint is a directory with that ``config.json`` (depth optionally cut
to ``n_layers``), a synthetic tokenizer and the marker file of
:mod:`mechtests.engine.random_weights`. It holds no weights: ``load_backend`` builds the model
with seeded random weights directly on the target device in the configured dtype, so an 8B
model is never written to disk and never copied through the CPU.

Synthetic tokenizer: word level over the built-in datasets' words, each word cut into chunks of
at most :data:`CHUNK` characters (one token per chunk), padded with filler tokens to the real
vocabulary size (the embedding and unembedding shapes must be the real ones). Chunking mimics
BPE on rare words: the organism's cities few-shot prompt is 76 tokens, the paper's Llama-3
cities prompt about 75 (docs/claims.md (claim 1)); whole words as tokens would give 61. Unknown text
(e.g. a preset's chat-template markers) becomes ``<unk>`` chunks of the same count.

Families: :func:`add_shape_families` adds ``<preset>-shape`` for every preset of
``shapes.yaml``: the preset's roles, prompt prefixes, templates and settings, with
``random_weights: true`` (the claim matrix shows INFO, never verdicts), the built-in organism
datasets (``builtin:organism``; timing does not depend on content, prompt lengths are realistic,
dataset sizes are the organism's) and the preset's knowledge datasets restricted to those the
built-in data has. Depth: ``MECHTESTS_SHAPE_LAYERS=N`` (or ``mechtests bench --shape-layers
N``) cuts every shape family to ``N`` layers and scales its layer settings
(:func:`scale_layer`).

Example:
    >>> path = resolve("llama31@2/base", Path(".cache"))                   # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())                             # doctest: +SKIP
    ['config.json', 'mechtests_random_weights.json', 'tokenizer.json', 'tokenizer_config.json']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mechtests.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from mechtests.families import Family

__all__ = [
    "CHUNK",
    "LAYERS_ENV",
    "SHAPES_FILE",
    "Shape",
    "add_shape_families",
    "build_tokenizer",
    "checkpoint_config",
    "load_shapes",
    "resolve",
    "scale_layer",
    "shape_family",
]

SHAPES_FILE = Path(__file__).with_name("shapes.yaml")
LAYERS_ENV = "MECHTESTS_SHAPE_LAYERS"
CODE_VERSION = "1"
CHUNK = 5  # characters per synthetic token
ROLES = ("base", "sft", "instruct", "control")
SEEDS = {"base": 0, "sft": 1, "instruct": 2, "control": 3}
SUFFIX = "-shape"
_REF = re.compile(r"^(?P<family>[A-Za-z0-9_.\-]+?)(@(?P<layers>\d+))?/(?P<role>[a-z]+)$")


@dataclass(frozen=True)
class Shape:
    """One preset's real architecture (an entry of ``shapes.yaml``)."""

    name: str
    source: str
    config: dict[str, Any]
    n_params: float
    qkv_bias: bool
    same_shape: tuple[str, ...] = ()
    dtype: str = "bfloat16"  # the default dtype of `mechtests bench` for this shape

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])


@cache
def load_shapes(path: Path = SHAPES_FILE) -> dict[str, Shape]:
    """Every entry of ``shapes.yaml`` (cached per process)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    shapes = {}
    for name, body in raw.items():
        try:
            shapes[str(name)] = Shape(
                name=str(name), source=str(body["source"]), config=dict(body["config"]),
                n_params=float(body["n_params"]), qkv_bias=bool(body.get("qkv_bias", False)),
                same_shape=tuple(body.get("same_shape") or ()),
                dtype=str(body.get("dtype", "bfloat16")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{path}: shape {name!r} is malformed ({exc!r}); expected source, n_params and "
                "config. Fix: compare it with the llama31 entry."
            ) from None
    return shapes


def _shape(name: str) -> Shape:
    shapes = load_shapes()
    if name not in shapes:
        raise CheckpointError(
            f"shape checkpoint family {name!r} is unknown; expected one of "
            f"{', '.join(sorted(shapes))}. Fix: e.g. 'shape:llama31/base' or add it to "
            "mechtests/shapes.yaml."
        )
    return shapes[name]


def _layers(shape: Shape, n_layers: int | None) -> int:
    n = shape.n_layers if n_layers is None else int(n_layers)
    if not 1 <= n <= shape.n_layers:
        raise ConfigError(
            f"shape {shape.name!r} has {shape.n_layers} layers; {n} were asked for. "
            f"Fix: pass a depth in 1..{shape.n_layers} (--shape-layers / {LAYERS_ENV} / @N)."
        )
    return n


# -- checkpoints --------------------------------------------------------------------------------
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
    shape = _shape(match["family"])
    n = _layers(shape, int(match["layers"]) if match["layers"] else None)
    role = match["role"]
    vocab = _vocab(int(shape.config["vocab_size"]))
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
def _vocab(size: int) -> list[str]:
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


# -- families -----------------------------------------------------------------------------------
def scale_layer(layer: int, n_layers: int, real_layers: int) -> int:
    """A real-depth layer index mapped onto a model cut to ``n_layers``: ``round(l * n / L)``
    within ``1 .. n - 1`` for ``l > 0`` (monotone). Layer 0 stays 0; a later layer never maps
    to 0, whose ``resid_pre`` is the bare embedding (no token mixing: the refusal direction of
    a fixed template position would be zero)."""
    scaled = min(n_layers - 1, round(layer * n_layers / real_layers))
    return max(scaled, min(1, layer, n_layers - 1))


def _builtin_datasets() -> set[str]:
    from mechtests.data.sources import FIXTURES

    return {p.stem for p in (FIXTURES / "organism" / "datasets" / "du2025").glob("*.csv")}


def shape_family(preset: Family, n_layers: int | None = None,
                 paper_datasets: bool = False) -> Family:
    """``<preset>-shape``: ``preset``'s roles and settings on ``shape:`` checkpoints of its real
    architecture (``n_layers`` deep; layer settings scaled), random weights, and the built-in
    datasets, or with ``paper_datasets`` the preset's own (``datasets: paper``: the paper's
    dataset sizes; give the folder with ``--mechtests-datasets``)."""
    from mechtests.families import KnowledgeSettings, ModelSpec

    shape = _shape(preset.name)
    real = shape.n_layers
    n = _layers(shape, n_layers)
    depth = "" if n == real else f"@{n}"
    models = {role: ModelSpec(role, f"shape:{shape.name}{depth}/{role}", spec.prompt_prefix)
              for role, spec in preset.models.items()}
    have = _builtin_datasets() if not paper_datasets else set(
        (*preset.knowledge.datasets, *preset.truth.train_datasets))
    knowledge = tuple(d for d in preset.knowledge.datasets if d in have) or ("cities",)
    truth = dataclasses.replace(
        preset.truth,
        probe_layer=scale_layer(preset.truth.probe_layer, n, real),
        intervene_layer=scale_layer(preset.truth.intervene_layer, n, real),
        train_datasets=tuple(d for d in preset.truth.train_datasets if d in have),
    )
    refusal = dataclasses.replace(preset.refusal,
                                  layer=scale_layer(preset.refusal.layer, n, real))
    return dataclasses.replace(
        preset,
        name=preset.name + SUFFIX,
        description=(f"Random weights in the real shape of {preset.name} ({n} of {real} layers; "
                     f"{shape.source}); {'paper' if paper_datasets else 'built-in'} datasets. "
                     "Timing and memory only: verdicts are INFO."),
        datasets="paper" if paper_datasets else "builtin:organism",
        models=models,
        truth=truth,
        knowledge=KnowledgeSettings(knowledge),
        refusal=refusal,
        random_weights=True,
        extra={**preset.extra, "shape": {"preset": preset.name, "n_layers": n,
                                         "real_layers": real, "source": shape.source,
                                         "dtype": shape.dtype}},
    )


def add_shape_families(families: dict[str, Family]) -> dict[str, Family]:
    """``families`` plus ``<preset>-shape`` for every preset in ``shapes.yaml`` (entries already
    defined, e.g. by a ``--families-file``, are kept). Depth from ``$MECHTESTS_SHAPE_LAYERS``."""
    raw = os.environ.get(LAYERS_ENV, "").strip()
    if raw and not raw.isdigit():
        raise ConfigError(
            f"{LAYERS_ENV}={raw!r} is not a layer count. Fix: set it to a positive integer "
            "(e.g. 2) or unset it for the real depth."
        )
    out = dict(families)
    for name in load_shapes():
        if name in families and name + SUFFIX not in families:
            shape = load_shapes()[name]
            n = min(int(raw), shape.n_layers) if raw else None
            out[name + SUFFIX] = shape_family(families[name], n)
    return out
