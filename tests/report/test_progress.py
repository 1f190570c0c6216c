"""Progress bars: drawn for a person at a terminal, quiet under CI and in xdist workers."""

from __future__ import annotations

import io

import pytest

from mechtests import progress


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """A stream the bars write to, with stderr taken for a terminal, outside CI and xdist."""
    for name in ("CI", "PYTEST_XDIST_WORKER", progress.ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    return io.StringIO()


def test_bars_are_drawn_at_a_terminal(terminal: io.StringIO) -> None:
    assert progress.progress_enabled()
    assert list(progress.bar(range(5), desc="collect", file=terminal, mininterval=0)) == [
        0, 1, 2, 3, 4]
    assert "collect" in terminal.getvalue()


@pytest.mark.parametrize(("name", "value"), [("CI", "true"), ("PYTEST_XDIST_WORKER", "gw1"),
                                             (progress.ENV, "0")])
def test_bars_are_quiet_under_ci_in_xdist_workers_and_when_turned_off(
    terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert not progress.progress_enabled()
    assert list(progress.bar(iter("abc"), desc="quiet", total=3, file=terminal)) == ["a", "b",
                                                                                   "c"]
    assert terminal.getvalue() == ""


def test_bars_are_quiet_off_a_terminal_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CI", "PYTEST_XDIST_WORKER", progress.ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: False)
    assert not progress.progress_enabled()
    assert not progress.progress_enabled(enabled=False)
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.progress_enabled()
    assert not progress.progress_enabled(enabled=False)  # the caller's "no" still wins
