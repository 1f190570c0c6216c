"""The activation store: cached activations on disk, keyed by everything that changes them.

Entries are safetensors files written atomically (:func:`~mechtests.checkpoints.atomic.atomic_file`)
under a file lock, so concurrent xdist workers compute an entry once and the others wait and
read it. An entry that fails to load or has the wrong sites or shapes is recomputed with a
warning, never reused. Keys: :mod:`mechtests.store.keys`.

Layout::

    <cache>/activations/<model-fingerprint[:16]>/<tag>-<key[:16]>.safetensors

Example:
    >>> store = ActivationStore(Path("cache"))                          # doctest: +SKIP
    >>> acts = store.get_or_compute(key_parts, expected, compute)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mechtests.checkpoints.atomic import atomic_file
from mechtests.errors import CacheError
from mechtests.store.keys import hash_key

__all__ = ["ActivationStore"]

_LABEL = "label:"  # metadata prefix of an entry's text labels


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The default check: every tensor finite."""
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    return f"{', '.join(bad)} contain NaN or inf" if bad else None


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
        differ (or that does not load) is recomputed with a warning. Computed tensors must be
        finite.
        """
        tensors, _ = self.get_or_compute_labelled(
            key_parts, expected_shapes, lambda: (compute(), {}), tag)
        return tensors

    def get_or_compute_labelled(
        self,
        key_parts: Mapping[str, Any],
        expected_shapes: Mapping[str, tuple[int, ...]],
        compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, str]]],
        tag: str,
        problem: Callable[[Mapping[str, torch.Tensor]], str | None] | None = None,
        labels: Collection[str] = (),
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """:meth:`get_or_compute` for results that carry text labels beside their tensors
        (e.g. which engine produced a map), kept in the entry's metadata.

        ``problem`` replaces the all-finite check: it says why tensors are not a usable result
        (None when they are) and runs on computed tensors (a problem is a
        :class:`~mechtests.errors.CacheError`) and on loaded ones (a problem means recompute).
        ``labels``: the label names an entry must carry (a loaded entry without one is
        recomputed; a computed result without one is a bug of the caller).
        """
        check = problem or _non_finite
        path = self.path_for(key_parts, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        with lock:
            if path.exists():
                loaded = self._load_checked(path, expected_shapes, check, labels)
                if loaded is not None:
                    self.hits += 1
                    return loaded
            self.misses += 1
            tensors, texts = compute()
            missing = sorted(set(labels) - set(texts))
            if missing:
                raise CacheError(f"computed result for {path.name} lacks labels {missing}. Fix: "
                                 "this is a bug in the caller's compute function.")
            self._check(tensors, expected_shapes, path, check)
            self._write(path, tensors, key_parts, texts)
            return tensors, dict(texts)

    def has(self, key_parts: Mapping[str, Any], tag: str) -> bool:
        """Whether an entry for ``key_parts`` is on disk (not yet checked: a read may still
        recompute it)."""
        return self.path_for(key_parts, tag).exists()

    @staticmethod
    def _check(
        tensors: Mapping[str, torch.Tensor],
        expected: Mapping[str, tuple[int, ...]],
        path: Path,
        check: Callable[[Mapping[str, torch.Tensor]], str | None],
    ) -> None:
        for name, shape in expected.items():
            got = tuple(tensors[name].shape) if name in tensors else None
            if got != tuple(shape):
                raise CacheError(
                    f"computed activations for {path.name} have {name} of shape {got}, expected "
                    f"{tuple(shape)}. Fix: this is a bug in the caller's expected shapes."
                )
        problem = check(tensors)
        if problem:
            raise CacheError(
                f"computed activations for {path.name}: {problem}. Fix: run in float32 "
                "(--mechtests-dtype float32) or check the checkpoint's weights."
            )

    @staticmethod
    def _load_checked(
        path: Path,
        expected: Mapping[str, tuple[int, ...]],
        check: Callable[[Mapping[str, torch.Tensor]], str | None],
        names: Collection[str] = (),
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # corrupted or truncated file
            warnings.warn(
                f"activation cache entry {path} does not load ({exc}); recomputing it.",
                stacklevel=4,
            )
            return None
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != tuple(shape):
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                warnings.warn(
                    f"activation cache entry {path} has {name} {got}, expected {tuple(shape)}; "
                    "recomputing it.",
                    stacklevel=4,
                )
                return None
        problem = check(tensors)
        if problem:
            warnings.warn(f"activation cache entry {path} is unusable ({problem}); "
                          "recomputing it.", stacklevel=4)
            return None
        labels = {k.removeprefix(_LABEL): v for k, v in meta.items() if k.startswith(_LABEL)}
        missing = sorted(set(names) - set(labels))
        if missing:
            warnings.warn(f"activation cache entry {path} lacks labels {missing}; recomputing it.",
                          stacklevel=4)
            return None
        return tensors, labels

    @staticmethod
    def _write(
        path: Path,
        tensors: Mapping[str, torch.Tensor],
        key_parts: Mapping[str, Any],
        labels: Mapping[str, str],
    ) -> None:
        meta = {"key": json.dumps(key_parts, sort_keys=True, default=str),
                **{_LABEL + k: v for k, v in labels.items()}}
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
