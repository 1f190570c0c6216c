"""The expected verdicts of every claim on every mutant, as data (``expected.yaml``).

Example:
    >>> table = load_expected()
    >>> table["truth.direction.cosine"]["identity"].verdict
    'PASS'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from mechtests.errors import ConfigError

EXPECTED_FILE = Path(__file__).with_name("expected.yaml")
EXPECTATIONS = ("PASS", "FAIL", "any")


@dataclass(frozen=True)
class Expectation:
    """What one claim must give on one mutant, and why."""

    verdict: str  # PASS | FAIL | any
    reason: str

    def matches(self, observed: str) -> bool | None:
        """True / False when decided; None when ``any`` or the observed verdict is no verdict
        (INCONCLUSIVE, ERROR, SKIP, INFO, missing)."""
        decided = {"PASS": "PASS", "XPASS": "PASS", "FAIL": "FAIL", "XFAIL": "FAIL"}.get(observed)
        if self.verdict == "any" or decided is None:
            return None
        return decided == self.verdict


def load_expected(path: Path = EXPECTED_FILE) -> dict[str, dict[str, Expectation]]:
    """claim id -> mutant -> :class:`Expectation`; malformed entries are a one-line ConfigError."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of claim id -> mutant -> verdict. "
                          "Fix: follow the header of expected.yaml.")
    table: dict[str, dict[str, Expectation]] = {}
    for claim_id, cells in raw.items():
        table[str(claim_id)] = {}
        for mutant, text in (cells or {}).items():
            verdict, sep, reason = str(text).partition(":")
            if not sep or verdict not in EXPECTATIONS or not reason.strip():
                raise ConfigError(
                    f"{path}: {claim_id}.{mutant} is {text!r}; expected '<PASS|FAIL|any>: "
                    "<reason>'. Fix: write the verdict, a colon and a one-line reason."
                )
            table[str(claim_id)][str(mutant)] = Expectation(verdict, reason.strip())
    return table
