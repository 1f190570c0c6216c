"""Allure: claim results as Allure test results, and ``mechtests report`` to render them.

When allure-pytest is active (``pytest --alluredir DIR``), every claim test carries

* parameters ``family``, ``models`` (``base -> instruct``), ``claim`` and ``checkpoints``
  (the pytest parameter ``claim_case`` is kept but hidden: it is the same information);
* labels: epic ``mechtests``, feature = area, story = claim id, tag = verdict (``INCONCLUSIVE``
  included: such a test is "broken" in Allure, or "skipped" under ``--allow-inconclusive``);
* a title ``<claim> on <family> (<ref> -> <post>)`` and a description (statement, paper,
  threshold source, verdict message, each precondition with its measured value, the interval's
  half-width against the distance to the threshold);
* attachments: ``claim record.json`` (the matrix record: metric, interval, control, threshold,
  details) and each plot or file the measure wrote (``record["artifacts"]``).

The attachments are added right after the test body ran, from the record the plugin already
stored on the item's ``user_properties``; the plugin itself does not know about Allure.

``mechtests report`` renders ``DIR`` with Allure 3 (the npm package ``allure``, run by Node)
as a **single HTML file** (``allure awesome --single-file``; tests grouped by area, then claim),
since the multi-file report does not open from ``file://``. Allure 3 is looked for in
``$MECHTESTS_ALLURE`` (a command), ``./node_modules/.bin/allure``, an ``allure`` on PATH that
reports version 3, and ``npx --no -- allure`` (never downloads). Without it one line says how
to get it. (Allure's page embeds an analytics script tag; offline it simply fails to load.)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = ["AllureClaims", "allure_active", "attach_record", "find_allure", "register_allure",
           "render_allure"]

RECORD_KEY = "mechtests_claim"  # = mechtests.plugin.recorder.RECORD_KEY
INSTALL_HINT = (
    "Allure 3 not found: it needs Node.js >= 20 and the npm package 'allure' "
    "(`npm install --no-save allure` in this folder, or `npm install -g allure`), then rerun "
    "`mechtests report`."
)
NODE_HINT = (
    "Node.js not found: install Node.js >= 20 (e.g. `apt-get install nodejs npm`), then "
    "`npm install -g allure` (Allure 3), then rerun `mechtests report`."
)
_TYPES = {".png": "PNG", ".svg": "SVG", ".jpg": "JPG", ".jpeg": "JPG", ".json": "JSON",
          ".csv": "CSV", ".txt": "TEXT", ".html": "HTML", ".tsv": "TSV"}


def allure_active(config: pytest.Config) -> bool:
    """True when allure-pytest writes results in this run (``--alluredir`` given)."""
    return bool(getattr(config.option, "allure_report_dir", None))


def attach_record(record: Mapping[str, Any], report_dir: Path) -> None:
    """Attach ``record``'s parameters, labels, description, JSON and plots to the current
    Allure test (call while the test is open)."""
    import allure

    claim, family = record["claim_id"], record["family"]
    models = " -> ".join(record["pair"])
    allure.dynamic.title(f"{claim} on {family} ({models})")
    allure.dynamic.parameter("family", family)
    allure.dynamic.parameter("models", models)
    allure.dynamic.parameter("claim", claim)
    checkpoints = record.get("checkpoints") or {}
    if checkpoints:
        allure.dynamic.parameter("checkpoints",
                                 ", ".join(f"{k}={v}" for k, v in checkpoints.items()))
    allure.dynamic.parameter("claim_case", f"{family}-{'_'.join(record['pair'])}-{claim}",
                             mode=allure.parameter_mode.HIDDEN)
    allure.dynamic.epic("mechtests")
    allure.dynamic.feature(str(record.get("area", "")))
    allure.dynamic.story(claim)
    allure.dynamic.tag(str(record.get("verdict", "")))
    lines = [
        f"**{record.get('statement', '')}**", "",
        f"- paper: {record.get('paper', '')}",
        f"- metric: {record.get('metric_name', '')} = {record.get('metric')}"
        f" (interval {record.get('interval')}, n {record.get('n')})",
        f"- control ({record.get('control_label', '')}): {record.get('control')}",
        f"- rule: {record.get('op', '')} {record.get('threshold')}, control margin "
        f"{record.get('control_margin')}; source: {record.get('source', '')}",
        f"- verdict: {record.get('verdict')}: {record.get('message', '')}",
    ]
    for check in record.get("preconditions") or []:
        lines.append(f"- precondition {'holds' if check.get('holds') else 'FAILED'}: "
                     f"{check.get('why')}: {check.get('quantity')} = {check.get('measured')} "
                     f"(needs {check.get('op')} {check.get('value')}; {check.get('source')})")
    power = record.get("power")
    if power:
        lines.append(f"- power: interval half-width {power.get('half_width')}, distance to the "
                     f"threshold {power.get('distance')}"
                     + ("" if power.get("decided") else " (the interval contains the threshold)"))
    if record.get("note"):
        lines.append(f"- note: {record['note']}")
    allure.dynamic.description("\n".join(lines))
    allure.attach(json.dumps(record, indent=2, default=str), name="claim record.json",
                  attachment_type=allure.attachment_type.JSON)
    for artifact in record.get("artifacts") or []:
        path = Path(artifact)
        if not path.is_absolute():
            path = report_dir / path
        if not path.is_file():
            continue
        kind = _TYPES.get(path.suffix.lower())
        allure.attach.file(str(path), name=path.name,
                           attachment_type=getattr(allure.attachment_type, kind) if kind else None,
                           extension=None if kind else path.suffix.lstrip("."))


class AllureClaims:
    """Adds :func:`attach_record` to every claim test, after its body ran."""

    def __init__(self, report_dir: Path) -> None:
        self.report_dir = report_dir

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        try:
            return (yield)
        finally:
            for key, value in item.user_properties:
                if key == RECORD_KEY:
                    attach_record(json.loads(str(value)), self.report_dir)


def register_allure(config: pytest.Config) -> None:
    """Register :class:`AllureClaims` when allure-pytest is active (any process)."""
    if allure_active(config):
        report_dir = Path(config.getoption("--claim-report") or "reports")
        config.pluginmanager.register(AllureClaims(report_dir), "mechtests-allure")


def _version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[-1].strip() if out.returncode == 0 and out.stdout else ""


def find_allure(cwd: Path | None = None) -> list[str] | None:
    """The command that runs Allure 3, or None (see the module docstring for the order)."""
    cwd = Path.cwd() if cwd is None else cwd
    env = os.environ.get("MECHTESTS_ALLURE")
    candidates: list[list[str]] = []
    if env:
        candidates.append(shlex.split(env))
    local = cwd / "node_modules" / ".bin" / "allure"
    if local.is_file():
        candidates.append([str(local)])
    on_path = shutil.which("allure")
    if on_path:
        candidates.append([on_path])
    npx = shutil.which("npx")
    if npx:
        candidates.append([npx, "--no", "--", "allure"])
    for cmd in candidates:
        if _version(cmd).startswith("3."):
            return cmd
    return None


def render_allure(results: Path, output: Path, name: str = "mechtests claims") -> tuple[int, str]:
    """Render ``results`` into ``output/index.html`` (one file); (exit code, one line)."""
    if not results.is_dir() or not any(results.iterdir()):
        return 1, (f"no Allure results in {results}. Fix: run `mechtests run --alluredir "
                   f"{results}` first.")
    if not (shutil.which("node") or os.environ.get("MECHTESTS_ALLURE")):
        return 1, NODE_HINT
    cmd = find_allure()
    if cmd is None:
        return 1, INSTALL_HINT
    args = [*cmd, "awesome", str(results), "--single-file", "--output", str(output),
            "--report-name", name, "--group-by", "feature,story"]  # area, then claim
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    index = output / "index.html"
    if out.returncode != 0 or not index.is_file():
        tail = " ".join((out.stderr or out.stdout).split())[-300:]
        return 1, f"Allure 3 failed ({shlex.join(args)}): {tail}"
    return 0, f"Allure report (single file): {index}"
