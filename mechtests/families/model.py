"""A model family as data: its checkpoints by role and its per-model claim settings.

Frozen dataclasses only; :mod:`mechtests.families.catalog` fills them from ``families.yaml``.
No torch, no YAML, no environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mechtests.errors import ConfigError

__all__ = [
    "ALL_EXAMPLES",
    "POST_ROLES",
    "ROLE_ORDER",
    "Family",
    "KnowledgeSettings",
    "ModelSpec",
    "RefusalSettings",
    "TruthSettings",
    "max_examples_arg",
    "parse_max_examples",
]

ROLE_ORDER = ("base", "sft", "instruct", "control")
POST_ROLES = ("sft", "instruct")


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
    # examples per dataset when the run does not say (--max-examples); None: every example
    max_examples: int | None = None
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

    def examples(self, given: int | None) -> int | None:
        """Examples per dataset of a run: ``given`` (parsed ``--max-examples``; 0: every
        example), else this family's ``max_examples``; None means every example."""
        return (self.max_examples if given is None else given) or None


ALL_EXAMPLES = "all"


def parse_max_examples(value: str | int | None) -> int | None:
    """``--max-examples`` as given: None (not given: the family's default), ``all`` (0: every
    example) or a whole number >= 1; anything else is a ValueError with the one-line reason."""
    if value is None:
        return None
    if str(value).strip().lower() == ALL_EXAMPLES:
        return 0
    try:
        number = int(value)
    except ValueError:
        number = 0  # not a whole number: refused below like one under 1
    if number < 1:
        raise ValueError(
            f"--max-examples is {value}; expected a number >= 1 (examples per dataset) or "
            f"{ALL_EXAMPLES}. Fix: pass --max-examples N with N >= 1, --max-examples "
            f"{ALL_EXAMPLES} for every example, or leave it out for the family's default.")
    return number


def max_examples_arg(text: str) -> str:
    """argparse ``type`` of ``--max-examples``: the text, checked by :func:`parse_max_examples`
    (a bad value is argparse's one-line usage error)."""
    try:
        parse_max_examples(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
