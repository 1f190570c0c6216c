"""Atomic writes, for files and for checkpoint directories: the content goes into a temporary
sibling, which is renamed into place only when it is complete (a crash or Ctrl-C leaves the old
version or nothing, never a half-written one).

* :func:`atomic_file` / :func:`write_file_atomically`: one file (reports, baselines, cache
  entries); the temporary file is fsynced before ``os.replace``.
* :func:`atomic_directory`: a whole checkpoint directory (builds, conversions, merges).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory", "atomic_file", "write_file_atomically"]


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield the path of a new, empty temporary file beside ``final`` (its mode as the umask
    allows, like a plain write); write it inside the block. On success it is fsynced and
    renamed onto ``final`` (``os.replace``); on any exception it is removed. The parent
    directory must exist."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)  # os.replace: atomic on POSIX, overwrites on Windows too
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file_atomically(final: Path, content: str | bytes, encoding: str = "utf-8") -> None:
    """Write ``content`` (text in ``encoding``, or bytes) to ``final`` atomically
    (:func:`atomic_file`)."""
    with atomic_file(final) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding=encoding)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` (an older,
    incomplete ``final`` is removed first), on any exception it is deleted. Hold the
    checkpoint's file lock around the block."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
