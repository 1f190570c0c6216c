"""The claim table: every ``mechtests/claims/*.yaml`` file, parsed and validated.

Each file is a list of claims of one area (see :class:`~mechtests.claims.model.Claim`). Ids are
dotted lower-snake and unique; the same id is the test id, the thresholds key, the report row and
the name its measure function is registered under (:func:`mechtests.measures.measure`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mechtests.claims.model import Claim
from mechtests.errors import ConfigError

CLAIMS_DIR = Path(__file__).resolve().parent
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_FIELDS = {"id", "area", "statement", "paper", "metric", "control", "pairs", "params"}
_REQUIRED = _FIELDS - {"pairs", "params"}


def _parse(entry: dict[str, Any], source: Path) -> Claim:
    where = f"{source.name}: claim {entry.get('id', '?')!r}"
    if "measure" in entry:
        raise ConfigError(
            f"{where} has a 'measure' key; expected none: a claim's measure is the function "
            "registered under its id. Fix: remove the key and register the function with "
            "@measure(\"<claim id>\") (mechtests/measures/<area>/measures.py)."
        )
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ConfigError(
            f"{where} has unknown keys {sorted(unknown)}; expected {sorted(_FIELDS)}. "
            "Fix: remove or rename them."
        )
    missing = _REQUIRED - set(entry)
    if missing:
        raise ConfigError(f"{where} is missing {sorted(missing)}. Fix: add them.")
    if not _ID_RE.match(str(entry["id"])):
        raise ConfigError(
            f"{where}: id must be dotted lower-snake like 'truth.direction.cosine'. Fix: rename it."
        )
    pairs = entry.get("pairs", [["base", "sft"], ["base", "instruct"]])
    return Claim(
        id=str(entry["id"]),
        area=str(entry["area"]),
        statement=str(entry["statement"]),
        paper=str(entry["paper"]),
        metric=str(entry["metric"]),
        control=str(entry["control"]),
        pairs=tuple((str(a), str(b)) for a, b in pairs),
        params=dict(entry.get("params") or {}),
    )


def load_claims(directory: Path = CLAIMS_DIR) -> list[Claim]:
    """All claims, sorted by id (xdist needs the same order on every worker)."""
    claims: dict[str, Claim] = {}
    for source in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(source.read_text()) or []
        if not isinstance(raw, list):
            raise ConfigError(f"{source}: expected a list of claims. Fix: start each with '- id:'.")
        for entry in raw:
            claim = _parse(entry, source)
            if claim.id in claims:
                raise ConfigError(f"{source.name}: claim id {claim.id!r} is defined twice.")
            claims[claim.id] = claim
    return [claims[k] for k in sorted(claims)]
