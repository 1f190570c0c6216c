"""The family catalog: ``families.yaml`` (packaged, beside the package) plus an optional
``--families-file``, parsed into :class:`~mechtests.families.model.Family` objects, with a
``<preset>-shape`` family added for every preset of ``shapes.yaml``
(:mod:`mechtests.families.shape`).

Reads files only: no torch, no environment. The depth of the shape families is passed in
(``shape_layers``); the pytest plugin and ``mechtests bench`` read ``--shape-layers`` /
``$MECHTESTS_SHAPE_LAYERS`` and pass it.

Example:
    >>> fam = load_families()["organism"]
    >>> fam.roles
    ('base', 'sft', 'instruct', 'control')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mechtests.errors import ConfigError, UnknownFamilyError
from mechtests.families.model import (
    POST_ROLES,
    ROLE_ORDER,
    Family,
    KnowledgeSettings,
    ModelSpec,
    RefusalSettings,
    TruthSettings,
)
from mechtests.families.shape import add_shape_families

__all__ = ["PACKAGED_FAMILIES", "load_families", "select_family"]

PACKAGED_FAMILIES = Path(__file__).parent.parent / "families.yaml"

_FAMILY_KEYS = {
    "description",
    "architecture",
    "datasets",
    "models",
    "truth",
    "knowledge",
    "refusal",
    "random_weights",
    "max_examples",
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
    max_examples = raw.get("max_examples")
    if max_examples is not None and (isinstance(max_examples, bool)
                                     or not isinstance(max_examples, int) or max_examples < 1):
        raise ConfigError(
            f"{source}: family {name!r} has max_examples {max_examples!r}; expected a whole "
            "number >= 1 (examples per dataset when --max-examples is not given). Fix: correct "
            "it or remove the key (then every example runs)."
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
        max_examples=max_examples,
        extra=dict(raw.get("extra", {})),
    )


def load_families(extra_file: Path | None = None,
                  shape_layers: int | None = None) -> dict[str, Family]:
    """The packaged families, updated with ``extra_file``'s entries when given, plus the
    ``<preset>-shape`` families, cut to ``shape_layers`` layers when given (real depth
    otherwise)."""
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
    return add_shape_families(families, shape_layers)


def select_family(families: Mapping[str, Family], name: str) -> Family:
    """The family called ``name``; an :class:`UnknownFamilyError` that lists the valid ones."""
    if name not in families:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; expected one of: {', '.join(sorted(families))}. "
            "Fix: pick one of those, or define it in a YAML file passed with --families-file."
        )
    return families[name]
