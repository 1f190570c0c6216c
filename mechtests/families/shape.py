"""Real-shape random-weight families: ``<preset>-shape`` derived from a preset family.

Performance at real scale does not depend on weight values. ``shapes.yaml`` records, for each
preset family, the architecture of its real checkpoints (facts from their public config.json
files). :func:`add_shape_families` adds ``<preset>-shape`` for every preset of ``shapes.yaml``:
the preset's roles, prompt prefixes, templates and settings on ``shape:`` checkpoints
(:mod:`mechtests.checkpoints.shape` builds them), with ``random_weights: true`` (the claim
matrix shows INFO, never verdicts), the built-in organism datasets (``builtin:organism``;
timing does not depend on content, prompt lengths are realistic, dataset sizes are the
organism's) and the preset's knowledge datasets restricted to those the built-in data has.

Depth is passed in, never read here: the pytest plugin reads ``$MECHTESTS_SHAPE_LAYERS``
(:data:`LAYERS_ENV`) and ``mechtests bench`` its ``--shape-layers`` (or the same variable),
parse it with :func:`parse_shape_layers` and pass it down; every shape family is then cut to
that many layers and its layer settings scaled (:func:`scale_layer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mechtests.errors import CheckpointError, ConfigError
from mechtests.families.model import Family, KnowledgeSettings, ModelSpec

__all__ = [
    "LAYERS_ENV",
    "SHAPES_FILE",
    "SUFFIX",
    "Shape",
    "add_shape_families",
    "find_shape",
    "layer_count",
    "load_shapes",
    "parse_shape_layers",
    "scale_layer",
    "shape_family",
]

SHAPES_FILE = Path(__file__).parent.parent / "shapes.yaml"
LAYERS_ENV = "MECHTESTS_SHAPE_LAYERS"
SUFFIX = "-shape"


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


def find_shape(name: str) -> Shape:
    """The shape of preset ``name``; a :class:`CheckpointError` listing the known ones."""
    shapes = load_shapes()
    if name not in shapes:
        raise CheckpointError(
            f"shape checkpoint family {name!r} is unknown; expected one of "
            f"{', '.join(sorted(shapes))}. Fix: e.g. 'shape:llama31/base' or add it to "
            "mechtests/shapes.yaml."
        )
    return shapes[name]


def layer_count(shape: Shape, n_layers: int | None) -> int:
    """``n_layers`` checked against ``shape``'s real depth (the real depth when None)."""
    n = shape.n_layers if n_layers is None else int(n_layers)
    if not 1 <= n <= shape.n_layers:
        raise ConfigError(
            f"shape {shape.name!r} has {shape.n_layers} layers; {n} were asked for. "
            f"Fix: pass a depth in 1..{shape.n_layers} (--shape-layers / {LAYERS_ENV} / @N)."
        )
    return n


def parse_shape_layers(text: str | None) -> int | None:
    """The depth given as text (e.g. the value of ``$MECHTESTS_SHAPE_LAYERS``): None when empty
    (real depth), else a positive integer; anything else is a :class:`ConfigError`."""
    raw = (text or "").strip()
    if raw and not raw.isdigit():
        raise ConfigError(
            f"{LAYERS_ENV}={raw!r} is not a layer count. Fix: set it to a positive integer "
            "(e.g. 2) or unset it for the real depth."
        )
    return int(raw) if raw else None


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
    shape = find_shape(preset.name)
    real = shape.n_layers
    n = layer_count(shape, n_layers)
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


def add_shape_families(families: dict[str, Family],
                       n_layers: int | None = None) -> dict[str, Family]:
    """``families`` plus ``<preset>-shape`` for every preset in ``shapes.yaml`` (entries already
    defined, e.g. by a ``--families-file``, are kept), each cut to ``n_layers`` layers (at most
    its real depth) when given."""
    out = dict(families)
    for name, shape in load_shapes().items():
        if name in families and name + SUFFIX not in families:
            depth = min(n_layers, shape.n_layers) if n_layers is not None else None
            out[name + SUFFIX] = shape_family(families[name], depth)
    return out
