"""Phase markers: the functions that do a run's heavy work name the phase they belong to.

Engine, method and plot functions carry :func:`timed_phase` (or wrap a block in :func:`phase`).
Outside a timing run a marker is a no-op: the marked function is called directly, at the cost
of one global lookup. A timing tool (``mechtests bench``, :mod:`mechtests.bench.phases`)
installs a :class:`PhaseRecorder` with :func:`recording`; while it is installed every marked
call is handed to it, which times the call into its phase and counts its items.

This module imports nothing of mechtests, so any layer may use it; the recorder lives with the
tool that installs it.

Example:
    >>> from mechtests.phases import timed_phase
    >>> @timed_phase("probes", items=lambda call, result: 1)
    ... def fit(x: int) -> int:
    ...     return x
    >>> fit(3)  # no recorder installed: a plain call
    3
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["MARKERS", "PATCHING", "PATCHING_PHASES", "PhaseCall", "PhaseMarker", "PhaseRecorder",
           "active_recorder", "one_item", "phase", "recording", "timed_phase"]

PATCHING = "patching"  # a patching call: sweep or cross-model, as the recorder decides by source
PATCHING_PHASES = frozenset({"patching sweep", "cross-model patching"})
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class PhaseCall:
    """One call of a marked function, as a recorder sees it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def arg(self, name: str) -> Any:
        """The argument ``name`` of this call, positional or keyword, defaults applied."""
        bound = _signature(self.fn).bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return bound.arguments[name]


ItemsFn = Callable[[PhaseCall, Any], int]  # (call, result) -> items processed


def one_item(_call: PhaseCall, _result: Any) -> int:
    """Items of a call that processes one thing (a model loaded, a probe fitted)."""
    return 1


@dataclass(frozen=True)
class PhaseMarker:
    """A marked function: its phase, how to count a call's items, and the phases under which a
    call is part of its caller's work (not counted again)."""

    phase: str
    where: str  # "module:qualname"
    items: ItemsFn | None = None
    inside: frozenset[str] = frozenset()


class PhaseRecorder(Protocol):
    """What :func:`recording` installs."""

    def run_marked(self, marker: PhaseMarker, call: PhaseCall) -> Any:
        """Run ``call`` (``call.fn(*call.args, **call.kwargs)``), timed as ``marker`` says."""
        ...

    def block(self, name: str, items: int) -> AbstractContextManager[object]:
        """Time a ``with`` block as the phase ``name`` with ``items`` items."""
        ...


MARKERS: list[PhaseMarker] = []  # every marked function imported so far
_recorder: PhaseRecorder | None = None


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def timed_phase(name: str, items: ItemsFn | None = None,
                inside: Iterable[str] = ()) -> Callable[[F], F]:
    """Mark a function (or method) as work of the phase ``name``; ``items(call, result)``
    counts what one call processed; a call made while a phase in ``inside`` runs is part of
    that phase (not counted again)."""

    def decorate(fn: F) -> F:
        marker = PhaseMarker(name, f"{fn.__module__}:{fn.__qualname__}", items,
                             frozenset(inside))
        MARKERS.append(marker)

        @functools.wraps(fn)
        def marked(*args: Any, **kwargs: Any) -> Any:
            recorder = _recorder
            if recorder is None:
                return fn(*args, **kwargs)
            return recorder.run_marked(marker, PhaseCall(fn, args, kwargs))

        marked.__phase_marker__ = marker  # type: ignore[attr-defined]
        return marked  # type: ignore[return-value]

    return decorate


@contextmanager
def phase(name: str, items: int = 0) -> Iterator[None]:
    """Time the block as the phase ``name`` with ``items`` items (a no-op with no recorder)."""
    recorder = _recorder
    if recorder is None:
        yield
        return
    with recorder.block(name, items):
        yield


def active_recorder() -> PhaseRecorder | None:
    """The recorder installed now, if any."""
    return _recorder


@contextmanager
def recording(recorder: PhaseRecorder) -> Iterator[PhaseRecorder]:
    """Hand every marked call to ``recorder`` for the block's duration (not thread-safe)."""
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield recorder
    finally:
        _recorder = previous
