"""Claim areas: the measure functions that turn a family's models into claim metrics.

Each area module registers its measure functions with :func:`measure`; a claim's ``measure``
field names one. A measure function receives the :class:`~mechtests.measures.context.FamilyContext`,
the claim and the model pair ``(reference_role, post_role)``, and returns a
:class:`~mechtests.claims.model.Measurement`. Area modules orchestrate (which model, which
prompts, which cached activations); the arithmetic lives in :mod:`mechtests.methods`.

Example::

    @measure("truth.direction_cosine")
    def direction_cosine(ctx, claim, pair):
        ...
        return Measurement(metric=cos, control=cos_null, control_label="control base")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from mechtests.errors import ConfigError

if TYPE_CHECKING:
    from mechtests.claims.model import Claim, Measurement
    from mechtests.measures.context import FamilyContext

MeasureFn = Callable[["FamilyContext", "Claim", tuple[str, str]], "Measurement"]

AREA_MODULES = (
    "mechtests.measures.truth.measures",
    "mechtests.measures.knowledge.measures",
    "mechtests.measures.refusal.measures",
    "mechtests.measures.confidence.measures",
)

_REGISTRY: dict[str, MeasureFn] = {}


def measure(name: str) -> Callable[[MeasureFn], MeasureFn]:
    """Register a measure function under ``name``."""

    def register(fn: MeasureFn) -> MeasureFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ConfigError(f"measure {name!r} is registered twice. Fix: rename one of them.")
        _REGISTRY[name] = fn
        return fn

    return register


def get_measure(name: str) -> MeasureFn:
    """The measure function called ``name`` (imports the area modules on first use)."""
    if name not in _REGISTRY:
        for module in AREA_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
    if name not in _REGISTRY:
        raise ConfigError(
            f"claim measure {name!r} is not registered; known: {', '.join(sorted(_REGISTRY))}. "
            "Fix: correct the claim's 'measure' field or register the function with @measure."
        )
    return _REGISTRY[name]
