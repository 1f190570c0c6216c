"""``thresholds.yaml``: each claim's pass rule with its provenance, validated at load.

Unknown keys, a missing ``source``, a bad comparator or a threshold for a claim that does not
exist are errors that name the file, the key and the fix. See the header of ``thresholds.yaml``
for the format.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mechtests.claims.model import OPS, ControlRule, Precondition, ThresholdSpec
from mechtests.errors import ConfigError

PACKAGED_THRESHOLDS = Path(__file__).resolve().parent.parent / "thresholds.yaml"
_RULE_KEYS = {"op", "value", "control_margin", "uses_interval", "source", "note", "tolerance",
              "preconditions"}
_PRECONDITION_KEYS = {"quantity", "op", "value", "why", "source"}
_CLAIM_KEYS = _RULE_KEYS | {"families"}
_TOP_KEYS = {"version", "claims", "expected_failures", "gates"}


@dataclass(frozen=True)
class Thresholds:
    """The parsed thresholds file."""

    path: Path
    sha256: str
    rules: Mapping[str, Mapping[str, Any]]  # claim id -> raw default rule (+ families)
    expected_failures: Mapping[str, Mapping[str, str]]  # family or "*" -> claim id -> reason
    gates: Mapping[str, Any] = field(default_factory=dict)

    def spec(self, claim_id: str, family: str) -> ThresholdSpec:
        """The rule for ``claim_id`` on ``family`` (family overrides applied)."""
        if claim_id not in self.rules:
            raise ConfigError(
                f"{self.path}: no threshold for claim {claim_id!r}. Fix: add "
                f"'claims: {{{claim_id}: {{op, value, control_margin, source}}}}'."
            )
        raw = dict(self.rules[claim_id])
        overrides = (raw.pop("families", None) or {}).get(family, {})
        raw.update(overrides)
        margin = raw.get("control_margin")
        return ThresholdSpec(
            claim_id=claim_id,
            op=str(raw["op"]),
            value=float(raw["value"]),
            control=ControlRule(float(margin)) if margin is not None else None,
            source=str(raw["source"]),
            note=str(raw.get("note", "")),
            uses_interval=bool(raw.get("uses_interval", True)),
            tolerance=raw.get("tolerance"),  # baseline drift (mechtests.report.baseline)
            preconditions=tuple(
                Precondition(quantity=str(p["quantity"]), op=str(p["op"]),
                             value=float(p["value"]), why=str(p["why"]),
                             source=str(p["source"]))
                for p in raw.get("preconditions") or ()
            ),
        )

    def expected_failure(self, claim_id: str, family: str) -> str | None:
        """The reason ``claim_id`` is expected to fail on ``family``, if it is."""
        for key in (family, "*"):
            reason = (self.expected_failures.get(key) or {}).get(claim_id)
            if reason:
                return str(reason)
        return None


def _check_rule(rule: Mapping[str, Any], where: str, path: Path, partial: bool) -> None:
    unknown = set(rule) - (_RULE_KEYS if partial else _CLAIM_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: {where} has unknown keys {sorted(unknown)}; expected some of "
            f"{sorted(_RULE_KEYS)}. Fix: remove or rename them."
        )
    if "op" in rule and rule["op"] not in OPS:
        raise ConfigError(
            f"{path}: {where} has op {rule['op']!r}; expected one of {OPS}. Fix: use '>=', "
            "'<=', '>' or '<'."
        )
    for key in ("value", "control_margin"):
        value = rule.get(key)
        if key in rule and (isinstance(value, bool) or not isinstance(value, (int, float))
                            or not math.isfinite(value)):
            raise ConfigError(f"{path}: {where}.{key} must be a number, not NaN or inf (got "
                              f"{value!r}). Fix: write a number, e.g. '{key}: 0.8'.")
    tol = rule.get("tolerance")
    number_ok = (isinstance(tol, (int, float)) and not isinstance(tol, bool)
                 and math.isfinite(tol) and tol >= 0)
    if tol is not None and not (number_ok or (isinstance(tol, str) and tol.strip().endswith("%"))):
        raise ConfigError(f"{path}: {where}.tolerance must be a number >= 0 or 'N%' (got "
                          f"{tol!r}). Fix: e.g. 'tolerance: 0.05' (absolute) or \"5%\".")
    _check_preconditions(rule.get("preconditions"), where, path)
    if not partial:
        for key in ("op", "value", "source"):
            if key not in rule or rule[key] in (None, ""):
                raise ConfigError(
                    f"{path}: {where} is missing {key!r}. Fix: every threshold needs op, value "
                    "and a source (paper section or 'ours: <what was measured>')."
                )


def _check_preconditions(raw: Any, where: str, path: Path) -> None:
    """``preconditions``: a list of {quantity, op, value, why, source}."""
    if raw is None:
        return
    example = ("e.g. '- {quantity: own_ie, op: \">=\", value: 0.1, why: own-vector steering "
               "works, source: ...}'")
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: {where}.preconditions must be a list (got "
                          f"{type(raw).__name__}). Fix: {example}.")
    for i, pre in enumerate(raw):
        at = f"{where}.preconditions[{i}]"
        if not isinstance(pre, dict):
            raise ConfigError(f"{path}: {at} must be a mapping. Fix: {example}.")
        keys = set(pre)
        if keys != _PRECONDITION_KEYS:
            raise ConfigError(f"{path}: {at} has keys {sorted(keys)}; expected exactly "
                              f"{sorted(_PRECONDITION_KEYS)}. Fix: {example}.")
        if pre["op"] not in OPS:
            raise ConfigError(f"{path}: {at}.op is {pre['op']!r}; expected one of {OPS}. "
                              "Fix: use '>=', '<=', '>' or '<'.")
        value = pre["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ConfigError(f"{path}: {at}.value must be a finite number (got {value!r}). "
                              "Fix: write a number.")
        for key in ("quantity", "why", "source"):
            if not isinstance(pre[key], str) or not pre[key].strip():
                raise ConfigError(f"{path}: {at}.{key} must be a non-empty string (got "
                                  f"{pre[key]!r}). Fix: say what it is.")


def _check_family(name: str, where: str, path: Path, families: Iterable[str] | None) -> None:
    known = sorted(families) if families is not None else None
    if known is not None and name not in known:
        raise ConfigError(f"{path}: {where} names no known family {name!r}; expected one of "
                          f"{', '.join(known)}. Fix: correct the family name (a misspelt one "
                          "would leave the default rule in force).")


def load_thresholds(path: Path | None = None, claim_ids: Iterable[str] | None = None,
                    families: Iterable[str] | None = None) -> Thresholds:
    """Parse and validate ``path`` (default: the packaged ``thresholds.yaml``).

    ``claim_ids`` / ``families``: the known claims and family names; a rule, an override or an
    expected failure that names another is an error (a misspelt family would silently get the
    default rule)."""
    path = Path(path) if path else PACKAGED_THRESHOLDS
    if path.is_dir():
        raise ConfigError(f"thresholds path {path} is a directory; expected a YAML file. Fix: "
                          "pass the file itself to --thresholds (e.g. DIR/thresholds.yaml).")
    if not path.is_file():
        raise ConfigError(
            f"thresholds file {path} does not exist. Fix: pass an existing file to --thresholds."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"thresholds file {path} cannot be read as UTF-8 text ({exc}). Fix: "
                          "save it as UTF-8 YAML.") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({detail}). Fix: correct the syntax.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'claims:' (got "
                          f"{type(raw).__name__}). Fix: see the packaged thresholds.yaml.")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level keys {sorted(unknown)}; expected {sorted(_TOP_KEYS)}."
        )
    rules = raw.get("claims") or {}
    for claim_id, rule in rules.items():
        if not isinstance(rule, dict):
            raise ConfigError(f"{path}: claims.{claim_id} must be a mapping.")
        _check_rule(rule, f"claims.{claim_id}", path, partial=False)
        for fam, override in (rule.get("families") or {}).items():
            _check_family(fam, f"claims.{claim_id}.families.{fam}", path, families)
            if not isinstance(override, dict):
                raise ConfigError(f"{path}: claims.{claim_id}.families.{fam} must be a mapping. "
                                  "Fix: e.g. '{value: 0.7, source: ...}'.")
            _check_rule(override, f"claims.{claim_id}.families.{fam}", path, partial=True)
    known = set(claim_ids) if claim_ids is not None else None
    expected = raw.get("expected_failures") or {}
    for fam, table in expected.items():
        if fam != "*":
            _check_family(fam, f"expected_failures.{fam}", path, families)
        for claim_id, reason in (table or {}).items():
            if known is not None and claim_id not in known:
                raise ConfigError(
                    f"{path}: expected_failures.{fam}.{claim_id} names no known claim. "
                    "Fix: correct the claim id."
                )
            if not reason:
                raise ConfigError(
                    f"{path}: expected_failures.{fam}.{claim_id} needs a reason with a source."
                )
    if known is not None:
        for claim_id in rules:
            if claim_id not in known:
                raise ConfigError(
                    f"{path}: claims.{claim_id} names no known claim; known: "
                    f"{', '.join(sorted(known))}. Fix: correct or remove it."
                )
    return Thresholds(
        path=path,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        rules=rules,
        expected_failures=expected,
        gates=raw.get("gates") or {},
    )
