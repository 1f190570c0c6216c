"""Writing a checkpoint directory atomically: into a temporary sibling, renamed into place
only when the block finishes (a crash or Ctrl-C leaves no half-written checkpoint)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
