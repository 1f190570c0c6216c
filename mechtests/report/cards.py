"""Model cards shown before the claim matrix: the behaviour gates a checkpoint passed.

A checkpoint directory (or the folder holding a family's checkpoints, as the organism's
``fixtures/organism/checkpoints/ci/``) may carry a ``card.json`` with ``gates`` (measured values
per role) and ``gate_rules`` (thresholds.yaml ``gates:``). The report prints them so that a
reader sees the organism passed its gates before reading claims measured on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mechtests.claims.model import meets


def read_cards(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The distinct model cards named by claim records, keyed by (family, path).

    Only cards of checkpoints a claim test already resolved are read: the report never
    resolves (let alone builds) a checkpoint itself.
    """
    cards: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        for path in record.get("model_cards", []):
            key = (str(record["family"]), str(path))
            if key in cards:
                continue
            try:
                cards[key] = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return cards


def format_gates(family: str, path: Path | str, card: Mapping[str, Any]) -> list[str]:
    """Terminal lines: one per gate, with value, rule and PASS/FAIL."""
    gates = card.get("gates") or {}
    rules = card.get("gate_rules") or {}
    if not gates:
        return []
    seeds = ", ".join(f"{k} {v}" for k, v in (card.get("seeds") or {}).items())
    lines = [f"{family}: model card {path} ({card.get('name', '')}; seeds {seeds})"]
    for role, values in gates.items():
        for key, value in (values or {}).items():
            # the control base is held to the base gates
            rule = rules.get(f"{role}_{key}") or (
                rules.get(f"base_{key}") if role == "control" else None
            )
            if not isinstance(value, (int, float)) or rule is None:
                continue
            ok = meets(value, rule["op"], rule["value"])
            lines.append(
                f"  gate {role}.{key:<22} {value:6.3f} {rule['op']} {rule['value']:<5} "
                f"{'PASS' if ok else 'FAIL'}"
            )
    return lines
