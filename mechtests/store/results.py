"""Checked JSON side caches: measured results of the areas (steering ``P_diff`` arrays,
generations, any measured intermediate).

An entry is reused only when its shape, type, finiteness and completeness pass the caller's
check (:func:`read_checked`); a computed result that fails the check is a
:class:`~mechtests.errors.CacheError` with its cause (the claim ends as ERROR), never cached
(:func:`write_checked`). Entries are written atomically
(:func:`~mechtests.checkpoints.atomic.write_file_atomically`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechtests.checkpoints.atomic import write_file_atomically
from mechtests.errors import CacheError

__all__ = ["Validator", "number_list_problem", "read_checked", "texts_problem", "write_checked"]

Validator = Callable[[Any], "str | None"]
_RESULT_FIX = ("Fix: run in float32 (--mechtests-dtype float32) or check the checkpoint's "
               "weights; nothing was cached.")


def number_list_problem(value: Any, length: int, name: str) -> str | None:
    """Why ``value`` is not a list of ``length`` finite numbers (shape, dtype, finiteness)."""
    if not isinstance(value, list):
        return f"{name} is {type(value).__name__}, expected a list"
    if len(value) != length:
        return f"{name} has {len(value)} values, expected {length}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"{name} holds non-numbers, expected floats"
    if not all(math.isfinite(v) for v in value):
        return f"{name} holds NaN or inf"
    return None


def texts_problem(value: Any, length: int, name: str) -> str | None:
    """Why ``value`` is not ``length`` generated texts, not all empty."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"{name} is not a list of strings"
    if len(value) != length:
        return f"{name} has {len(value)} texts, expected {length}"
    if value and not any(v.strip() for v in value):
        return f"{name}: all {length} generations are empty (the model produced no text)"
    return None


def read_checked(path: Path, validate: Validator) -> Any | None:
    """The JSON entry at ``path`` if it parses and ``validate`` finds no problem; else None
    (a present but bad entry is reported with a warning and recomputed, never reused)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warnings.warn(f"cache entry {path} does not load ({exc}); recomputing it.", stacklevel=2)
        return None
    problem = validate(value)
    if problem:
        warnings.warn(f"cache entry {path} is unusable ({problem}); recomputing it.",
                      stacklevel=2)
        return None
    return value


def write_checked(path: Path, value: Any, validate: Validator, what: str) -> None:
    """Check ``value`` (a computed result) and write it atomically; a bad result is a
    :class:`CacheError` with its cause, so it ends the claim as ERROR instead of a metric."""
    problem = validate(value)
    if problem:
        raise CacheError(f"{what} is not a usable result: {problem}. {_RESULT_FIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, json.dumps(value, allow_nan=False))
    except OSError as exc:
        raise CacheError(
            f"cannot write cache entry {path} ({exc.strerror}). Fix: point --mechtests-cache "
            "(or MECHTESTS_CACHE) at a writable directory with free space."
        ) from None
