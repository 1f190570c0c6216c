"""The bad-input catalogue's shared setup: one built tiny family, copies to break, and checks.

Tiny checkpoints are built once per session into a shared cache (about 7 s); each case copies
what it breaks into its own folder. Preflight-level cases run pytest in-process on the claim
suite and stop before any model loads, so each costs well under a second.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mechtests.errors import EXIT_CONFIG
from mechtests.families import PACKAGED_FAMILIES, resolve_checkpoint

ROLES = ("base", "sft", "instruct", "control")
BUILTIN_DATASETS = Path(__file__).resolve().parents[2] / "mechtests" / "fixtures" / "organism" \
    / "datasets"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the built tiny family (shared by every case)."""
    cache = tmp_path_factory.mktemp("bad-inputs-cache")
    for role in ROLES:
        resolve_checkpoint(f"tiny:llama/{role}", cache)
    return cache


@pytest.fixture(scope="session")
def tiny_dirs(tiny_cache: Path) -> dict[str, Path]:
    return {role: resolve_checkpoint(f"tiny:llama/{role}", tiny_cache) for role in ROLES}


@dataclass
class Case:
    """One run of the claim suite on bad input, and what it left behind."""

    pytester: pytest.Pytester
    cache: Path
    tiny: dict[str, Path]

    @property
    def reports(self) -> Path:
        return self.pytester.path / "reports"

    def checkpoint(self, role: str = "base", name: str | None = None) -> Path:
        """A private copy of a tiny checkpoint, to break."""
        target = self.pytester.path / (name or f"ckpt-{role}")
        shutil.copytree(self.tiny[role], target)
        return target

    def datasets(self) -> Path:
        """A private copy of the built-in datasets in the paper's layout."""
        target = self.pytester.path / "datasets"
        shutil.copytree(BUILTIN_DATASETS, target)
        return target

    def family_file(self, name: str = "broken", **changes: Any) -> Path:
        """A families file with the tiny family under ``name``; ``changes`` are dotted keys
        (``truth__probe_layer=5`` sets truth.probe_layer)."""
        body = yaml.safe_load(PACKAGED_FAMILIES.read_text())["tiny"]
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            node = body
            for key in parents:
                node = node[key]
            node[leaf] = value
        path = self.pytester.path / "families.yaml"
        path.write_text(yaml.safe_dump({name: body}))
        return path

    def run(self, *args: str, family: str | None = "tiny") -> pytest.RunResult:
        """The claim suite in-process (stops in the preflight for bad input)."""
        extra = ["--model-family", family] if family else []
        return self.pytester.runpytest_inprocess(
            "--pyargs", "mechtests.suite", "-n", "0", "-p", "no:randomly",
            "--mechtests-cache", str(self.cache), "--claim-report", str(self.reports),
            *extra, *args,
        )


@pytest.fixture
def case(pytester: pytest.Pytester, tiny_cache: Path, tiny_dirs: dict[str, Path],
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    """A case whose cache and report folders must be left as they were."""
    monkeypatch.delenv("MECHTESTS_DATASETS", raising=False)
    before = _files(tiny_cache)
    it = Case(pytester, tiny_cache, tiny_dirs)
    yield it
    assert _files(tiny_cache) == before, "the run left files in the cache"


def assert_config_error(result: pytest.RunResult, *fragments: str) -> str:
    """Exit code 4, one ``ERROR:`` line printed once, naming the fix and ``fragments``; no
    traceback; no report written."""
    out = result.stdout.str() + result.stderr.str()
    lines = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert result.ret == EXIT_CONFIG, out[-3000:]
    assert len(lines) == 1, out[-3000:]
    line = lines[0]
    assert "Fix:" in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert "Traceback" not in out, out[-3000:]
    return line


def assert_no_report(reports: Path) -> None:
    assert not any(reports.glob("claim_matrix.*")), sorted(_files(reports))

