"""Baselines: compare every metric of this run with a stored run (release gating).

A claim's verdict says whether the paper's claim holds; a baseline says whether the numbers
moved since the last accepted run (e.g. the last released instruct checkpoint). The two are
separate verdicts: the matrix shows ``drift`` beside the claim's own verdict.

* ``--baseline FILE``: after the run, each result's ``metric`` and ``control`` are compared with
  the same (claim, family, model pair) in FILE. A change beyond the claim's ``tolerance``
  (thresholds.yaml, per family overridable) is a **drift** and fails the run with a message that
  names the claim, the old and new values and the tolerance. A result FILE does not have is
  **new** and fails too, so new numbers never pass silently. Results of FILE that this run did
  not produce (deselected with ``-k``, another family) are listed, not failed.
* FILE missing: it is written from this run and the run **fails** (review, commit, rerun).
* ``--update-baseline``: (re)write FILE from this run; nothing is compared, nothing fails.

Tolerance: a number is an absolute tolerance on ``|new - old|``; a string ``"N%"`` is relative
to ``|old|``. Default :data:`DEFAULT_TOLERANCE` (0.05 absolute: most metrics are cosines,
fractions or accuracies in [0, 1], where 0.05 is a change a reviewer should see). Not compared:
intervals (bootstrap noise is already in the claim's verdict) and results without a metric
(SKIP/ERROR; the verdict column shows them). A verdict that turns INCONCLUSIVE, or stops being
INCONCLUSIVE, is a drift of its own (``verdict PASS -> INCONCLUSIVE``), also within tolerance.

Example:
    >>> Tolerance.parse("5%").allows(old=2.0, new=2.09), Tolerance.parse(0.05).allows(0.9, 0.96)
    (True, False)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TOLERANCE",
    "Drift",
    "Tolerance",
    "compare",
    "load_baseline",
    "result_key",
    "write_baseline",
]

DEFAULT_TOLERANCE = 0.05
FORMAT_VERSION = 1
COMPARED = ("metric", "control")
INCONCLUSIVE = "INCONCLUSIVE"  # = mechtests.claims.model.Verdict.INCONCLUSIVE
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*%\s*$")

Record = MutableMapping[str, Any]


class BaselineError(Exception):
    """A baseline file that cannot be read (not JSON, wrong format)."""


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move from its baseline value."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, raw: float | str | None) -> Tolerance:
        """``0.05`` (absolute), ``"5%"`` (relative to the baseline value) or None (default)."""
        if raw is None:
            return cls(DEFAULT_TOLERANCE)
        if isinstance(raw, str):
            match = _PERCENT.match(raw)
            if not match:
                raise ValueError(f"tolerance {raw!r}: expected a number or 'N%'")
            return cls(float(match.group(1)) / 100.0, relative=True)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
            raise ValueError(f"tolerance {raw!r}: expected a non-negative number or 'N%'")
        return cls(float(raw))

    def limit(self, old: float) -> float:
        return self.value * abs(old) if self.relative else self.value

    def allows(self, old: float, new: float) -> bool:
        if math.isnan(old) or math.isnan(new):
            return math.isnan(old) and math.isnan(new)
        return abs(new - old) <= self.limit(old) + 1e-12

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Drift:
    """The baseline comparison of one result (``status``: ok, drift, new or n/a)."""

    key: str
    status: str
    message: str
    tolerance: str
    old: Mapping[str, Any] | None
    changes: tuple[dict[str, Any], ...] = ()

    @property
    def fails(self) -> bool:
        return self.status in ("drift", "new")

    def to_json(self, file: Path) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "tolerance": self.tolerance,
                "baseline": dict(self.old) if self.old else None,
                "changes": list(self.changes), "file": str(file)}


def result_key(record: Mapping[str, Any]) -> str:
    """``claim | family | ref->post``: what identifies a result across runs."""
    return f"{record['claim_id']} | {record['family']} | {'->'.join(record['pair'])}"


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def write_baseline(path: Path, records: Iterable[Mapping[str, Any]],
                   thresholds_sha256: str = "") -> int:
    """Write the baseline of ``records`` to ``path`` (atomically); return the result count."""
    results = {}
    for rec in records:
        results[result_key(rec)] = {
            "claim_id": rec["claim_id"], "family": rec["family"], "pair": list(rec["pair"]),
            "metric": _num(rec.get("metric")), "control": _num(rec.get("control")),
            "interval": rec.get("interval"), "verdict": rec.get("verdict"),
            "checkpoints": rec.get("checkpoints", {}),
        }
    data = {
        "mechtests_baseline": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "thresholds_sha256": thresholds_sha256,
        "results": dict(sorted(results.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    from mechtests.checkpoints.atomic import write_file_atomically

    write_file_atomically(path, json.dumps(data, indent=1, allow_nan=True) + "\n")
    return len(results)


def load_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """The stored results of a baseline file, keyed by :func:`result_key`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BaselineError(
            f"baseline {path} cannot be read ({exc}). Fix: rerun with --update-baseline to "
            "write a fresh one."
        ) from None
    if not isinstance(data, dict) or data.get("mechtests_baseline") != FORMAT_VERSION:
        raise BaselineError(
            f"baseline {path} is not a mechtests baseline (format {FORMAT_VERSION}). Fix: point "
            "--baseline at a file written by --update-baseline."
        )
    return dict(data.get("results") or {})


def _inconclusive_moved(old: Any, new: Any) -> str | None:
    """A verdict that became, or stopped being, INCONCLUSIVE (a precondition or the interval's
    power changed): a drift even when the numbers stay within tolerance, because under
    ``--allow-inconclusive`` a PASS turning INCONCLUSIVE would otherwise pass silently."""
    if old is None or old == new or INCONCLUSIVE not in (old, new):
        return None
    return f"verdict {old} -> {new}"


def compare(records: Iterable[Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]],
            tolerance_for: Callable[[str, str], Tolerance]) -> list[Drift]:
    """One :class:`Drift` per record, in order."""
    out = []
    for rec in records:
        key = result_key(rec)
        where = f"{rec['claim_id']} on {rec['family']} ({'->'.join(rec['pair'])})"
        tol = tolerance_for(rec["claim_id"], rec["family"])
        old = baseline.get(key)
        if old is None:
            out.append(Drift(key, "new", f"{where}: not in the baseline (new result)",
                             str(tol), None))
            continue
        changes: list[dict[str, Any]] = []
        bad: list[str] = []
        status = "ok"
        measured = rec.get("metric") is not None and old.get("metric") is not None
        for name in COMPARED if measured else ():
            before, now = _num(old.get(name)), _num(rec.get(name))
            if before is None or now is None:
                continue
            ok = tol.allows(before, now)
            changes.append({"field": name, "old": before, "new": now, "delta": now - before,
                            "ok": ok})
            if not ok:
                status = "drift"
                bad.append(f"{name} {before:.6g} -> {now:.6g} (change {now - before:+.3g}, "
                           f"tolerance {tol})")
        verdict_moved = _inconclusive_moved(old.get("verdict"), rec.get("verdict"))
        if verdict_moved:
            status = "drift"
            bad.append(verdict_moved)
        if not changes and not verdict_moved:
            status, message = "n/a", f"{where}: no metric to compare ({rec.get('verdict')})"
        elif bad:
            message = f"{where}: " + "; ".join(bad)
        else:
            worst = max(abs(c["delta"]) for c in changes)
            message = f"{where}: within tolerance {tol} (largest change {worst:.3g})"
        out.append(Drift(key, status, message, str(tol), old, tuple(changes)))
    return out
