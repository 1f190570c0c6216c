"""Measures: the functions that turn a family's models into claim metrics, one per claim.

Each area package (``knowledge``, ``truth``, ``refusal``, ``confidence``) registers its measure
functions with :func:`measure` under the ids of the claims they measure, so a claim's id names
its measure; two claims that differ only in ``params`` share one function. A measure function
receives the :class:`~mechtests.measures.context.FamilyContext`, the claim and the model pair
``(reference_role, post_role)``, and returns a :class:`~mechtests.claims.model.Measurement`.
The area packages orchestrate (which model, which prompts, which cached activations); the
arithmetic lives in :mod:`mechtests.methods`; the plots a measurement asks for
(``Measurement.figures``) are drawn after it by :mod:`mechtests.report.plots`.

Example::

    @measure("truth.direction.cosine")
    def direction_cosine(ctx, claim, pair):
        ...
        return Measurement(metric=cos, control=cos_null, control_label="control base")
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable
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


def measure(*claim_ids: str) -> Callable[[MeasureFn], MeasureFn]:
    """Register a measure function under the ids of the claims it measures."""

    def register(fn: MeasureFn) -> MeasureFn:
        for claim_id in claim_ids:
            if claim_id in _REGISTRY and _REGISTRY[claim_id] is not fn:
                raise ConfigError(f"two measures are registered for claim {claim_id!r}. "
                                  "Fix: register one function per claim id.")
            _REGISTRY[claim_id] = fn
        return fn

    return register


def registered_measures() -> dict[str, MeasureFn]:
    """Every registered measure by claim id (imports the area modules on first use)."""
    for module in AREA_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def check_measures(claim_ids: Iterable[str]) -> None:
    """Every claim has a measure and every measure a claim; else one ConfigError naming them."""
    claims, measures = set(claim_ids), set(registered_measures())
    if claims - measures:
        raise ConfigError(
            f"claims {', '.join(sorted(claims - measures))} have no measure; expected one "
            "function registered under each claim id. Fix: add @measure(\"<claim id>\") to the "
            "function that measures it (mechtests/measures/<area>/measures.py).")
    if measures - claims:
        raise ConfigError(
            f"measures {', '.join(sorted(measures - claims))} are registered for no claim; "
            "expected each id in mechtests/claims/*.yaml. Fix: correct the id in @measure or "
            "add the claim.")


def get_measure(claim_id: str) -> MeasureFn:
    """The measure function of the claim ``claim_id``; the first call checks that the claim
    table and the registered measures match (:func:`check_measures`)."""
    registry = _checked_registry()
    if claim_id not in registry:
        raise ConfigError(
            f"claim {claim_id!r} has no measure; known: {', '.join(sorted(registry))}. "
            "Fix: correct the claim id or register its function with @measure."
        )
    return registry[claim_id]


@functools.cache
def _checked_registry() -> dict[str, MeasureFn]:
    """The registry, once the claim table and it are known to match (a mismatch raises again
    on every call)."""
    from mechtests.claims.table import load_claims

    check_measures(claim.id for claim in load_claims())
    return _REGISTRY
