"""The activation store: cached activations on disk, keyed by everything that changes them.

A key hashes the checkpoint fingerprint (file contents, not the path), dtype, backend, the
prompts (hence dataset and template), the sites and the positions. Entries are safetensors
files written atomically (temp file + rename) under a file lock, so concurrent xdist workers
compute an entry once and the others wait and read it. An entry that fails to load or has the
wrong sites or shapes is recomputed with a warning, never reused.

Layout::

    <cache>/activations/<model-fingerprint[:16]>/<tag>-<key[:16]>.safetensors

Side caches (JSON results of the areas: steering ``P_diff`` arrays, generations) go through
:func:`read_checked` / :func:`write_checked`: an entry is reused only when its shape, type,
finiteness and completeness pass the caller's check; a computed result that fails the check is
a :class:`~mechtests.errors.CacheError` with its cause (the claim ends as ERROR), never cached.

Example:
    >>> store = ActivationStore(Path("cache"))                          # doctest: +SKIP
    >>> acts = store.get_or_compute(key_parts, expected, compute)      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from mechtests.checkpoints.atomic import atomic_file, write_file_atomically
from mechtests.errors import CacheError

_SMALL_FILE = 256 * 2**20  # files below this are hashed whole
_SAMPLE = 2**20  # bytes read at each sample point of a large file
_SAMPLES = 16


def fingerprint_checkpoint(directory: Path) -> str:
    """A content hash of a checkpoint directory (weights, config and tokenizer files).

    Files under 256 MiB are hashed whole. Larger weight files are hashed by their size, their
    safetensors header (names, shapes, dtypes, offsets) and 16 evenly spaced 1 MiB samples, which
    changes whenever the weights are retrained while hashing an 8B model in well under a second.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as fh:
            if size <= _SMALL_FILE:
                for chunk in iter(lambda: fh.read(2**22), b""):
                    digest.update(chunk)
                continue
            header_len = (
                int.from_bytes(fh.read(8), "little") if path.suffix == ".safetensors" else 0
            )
            fh.seek(0)
            digest.update(fh.read(8 + min(header_len, 2**24)))
            for i in range(_SAMPLES):
                fh.seek(size * i // _SAMPLES)
                digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


def hash_key(parts: Mapping[str, Any]) -> str:
    """A stable hash of a JSON-able mapping."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def hash_prompts(prompts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


class ActivationStore:
    """Disk cache of activation tensors."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "activations"
        self.hits = 0
        self.misses = 0

    def path_for(self, key_parts: Mapping[str, Any], tag: str) -> Path:
        model = str(key_parts.get("model", "unknown"))[:16]
        return self.root / model / f"{tag}-{hash_key(key_parts)[:16]}.safetensors"

    def get_or_compute(
        self,
        key_parts: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
        compute: Callable[[], dict[str, torch.Tensor]],
        tag: str = "acts",
    ) -> dict[str, torch.Tensor]:
        """Load the entry for ``key_parts`` or compute, verify and write it.

        ``expected_shapes`` maps each tensor name to its shape; an entry whose names or shapes
        differ (or that does not load) is recomputed with a warning.
        """
        path = self.path_for(key_parts, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        with lock:
            if path.exists():
                loaded = self._load_checked(path, expected_shapes)
                if loaded is not None:
                    self.hits += 1
                    return loaded
            self.misses += 1
            tensors = compute()
            self._check(tensors, expected_shapes, path)
            self._write(path, tensors, key_parts)
            return tensors

    @staticmethod
    def _check(
        tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: Path
    ) -> None:
        for name, shape in expected.items():
            got = tuple(tensors[name].shape) if name in tensors else None
            if got != tuple(shape):
                raise CacheError(
                    f"computed activations for {path.name} have {name} of shape {got}, expected "
                    f"{tuple(shape)}. Fix: this is a bug in the caller's expected shapes."
                )
            if not torch.isfinite(tensors[name]).all():
                raise CacheError(
                    f"computed activations {name} for {path.name} contain NaN or inf. Fix: run in "
                    "float32 (--mechtests-dtype float32) or check the checkpoint's weights."
                )

    @staticmethod
    def _load_checked(
        path: Path, expected: Mapping[str, tuple[int, ...]]
    ) -> dict[str, torch.Tensor] | None:
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # corrupted or truncated file
            warnings.warn(
                f"activation cache entry {path} does not load ({exc}); recomputing it.",
                stacklevel=3,
            )
            return None
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != tuple(shape):
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                warnings.warn(
                    f"activation cache entry {path} has {name} {got}, expected {tuple(shape)}; "
                    "recomputing it.",
                    stacklevel=3,
                )
                return None
        return tensors

    @staticmethod
    def _write(
        path: Path, tensors: Mapping[str, torch.Tensor], key_parts: Mapping[str, Any]
    ) -> None:
        meta = {"key": json.dumps(key_parts, sort_keys=True, default=str)}
        try:
            with atomic_file(path) as tmp:
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), meta
                )
        except OSError as exc:
            raise CacheError(
                f"cannot write activation cache entry {path} ({exc}). Fix: point "
                "--mechtests-cache (or MECHTESTS_CACHE) at a writable directory with free space."
            ) from None


# -- side caches: JSON results (steering P_diff arrays, generations) -------------------------
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
