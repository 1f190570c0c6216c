"""Progress bars for long phases, quiet where nobody watches them.

Long phases (organism training, activation collection, patching sweeps, generation) wrap their
loops in :func:`bar`. A bar is drawn only when all of these hold:

* the caller asked for one (``enabled=True``, e.g. ``RunOptions.progress``);
* ``MECHTESTS_PROGRESS`` is not ``0`` (``1`` forces bars on, even in CI or off a terminal);
* not under CI (``$CI`` set, as GitHub Actions, GitLab and this project's ``.ci/run`` do);
* not in a pytest-xdist worker (``$PYTEST_XDIST_WORKER``): workers' stderr is not a terminal
  and N interleaved bars are noise;
* stderr is a terminal.

Example:
    >>> from mechtests.progress import bar
    >>> total = 0
    >>> for batch in bar(range(3), desc="patching", total=3):
    ...     total += batch
    >>> total
    3
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

__all__ = ["ENV", "bar", "progress_enabled"]

ENV = "MECHTESTS_PROGRESS"
T = TypeVar("T")


def progress_enabled(enabled: bool = True) -> bool:
    """Whether a progress bar should be drawn now (see the module docstring for the rules)."""
    if not enabled:
        return False
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if os.environ.get("CI") or os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    return _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar(iterable: Iterable[T], desc: str = "", total: int | None = None,
        enabled: bool = True, **tqdm_kwargs: Any) -> Iterator[T]:
    """Iterate ``iterable`` behind a tqdm bar when :func:`progress_enabled` allows one.

    ``total`` defaults to ``len(iterable)`` where it has one. Extra keyword arguments go to
    ``tqdm`` (``unit="prompt"``, ``leave=True``...). When bars are off, this is the plain
    iterable and tqdm is not imported.
    """
    if not progress_enabled(enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm

    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    tqdm_kwargs.setdefault("leave", False)
    tqdm_kwargs.setdefault("dynamic_ncols", True)
    progress = tqdm(iterable, desc=desc or None, total=total, **tqdm_kwargs)
    try:
        yield from progress
    finally:
        progress.close()
