"""Cache keys: a checkpoint's content fingerprint and stable hashes of key parts and prompts.

A key hashes everything that changes a cached result: the checkpoint fingerprint (file
contents, not the path), dtype, backend, the prompts (hence dataset and template), the sites
and the positions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["fingerprint_checkpoint", "hash_key", "hash_prompts"]

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
