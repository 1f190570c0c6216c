"""Model families as data: a base checkpoint plus its post-trained versions (SFT, instruct)
and, where one exists, an independently trained control base, with per-model claim settings.

* :mod:`~mechtests.families.model`: the frozen dataclasses (:class:`Family` and its settings);
* :mod:`~mechtests.families.catalog`: ``families.yaml`` (packaged; ``--families-file`` adds or
  replaces entries) parsed into families;
* :mod:`~mechtests.families.shape`: the ``<preset>-shape`` real-shape families of
  ``shapes.yaml`` (depth passed in by the caller).

No torch, no pytest, no environment. Checkpoint references resolve offline in
:mod:`mechtests.checkpoints.resolve`; :func:`resolve_checkpoint` is re-exported here, beside
the public names of the three modules, so ``from mechtests.families import Family`` works.
"""

from __future__ import annotations

from mechtests.checkpoints.resolve import SCHEME_RESOLVERS, resolve_checkpoint
from mechtests.families.catalog import PACKAGED_FAMILIES, load_families, select_family
from mechtests.families.model import (
    ALL_EXAMPLES,
    POST_ROLES,
    ROLE_ORDER,
    Family,
    KnowledgeSettings,
    ModelSpec,
    RefusalSettings,
    TruthSettings,
    max_examples_arg,
    parse_max_examples,
)

__all__ = [
    "ALL_EXAMPLES",
    "PACKAGED_FAMILIES",
    "POST_ROLES",
    "ROLE_ORDER",
    "SCHEME_RESOLVERS",
    "Family",
    "KnowledgeSettings",
    "ModelSpec",
    "RefusalSettings",
    "TruthSettings",
    "load_families",
    "max_examples_arg",
    "parse_max_examples",
    "resolve_checkpoint",
    "select_family",
]
