"""Atomic file writes (mechtests/checkpoints/atomic.py): the one helper behind the reports,
baselines and cache entries."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mechtests.checkpoints.atomic import atomic_file, write_file_atomically


def test_a_write_replaces_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "claim_matrix.json"
    target.write_text("old")
    write_file_atomically(target, '{"new": true}')
    write_file_atomically(tmp_path / "blob.bin", b"\x00\x01")
    assert target.read_text() == '{"new": true}'
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "claim_matrix.json"]


def test_a_write_that_fails_keeps_the_old_file_and_removes_the_temporary_one(
        tmp_path: Path) -> None:
    target = tmp_path / "baseline.json"
    target.write_text("old")

    def interrupted_write() -> None:
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted_write()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def test_the_written_file_gets_the_mode_of_a_plain_write(tmp_path: Path) -> None:
    plain = tmp_path / "plain.md"
    plain.write_text("x")
    atomic = tmp_path / "atomic.md"
    write_file_atomically(atomic, "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
