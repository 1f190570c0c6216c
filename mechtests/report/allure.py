"""Allure: ``mechtests report`` renders the claim results (written by the pytest side,
:mod:`mechtests.plugin.allure`) as one HTML file.

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

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["INSTALL_HINT", "NODE_HINT", "find_allure", "render_allure"]

INSTALL_HINT = (
    "Allure 3 not found: it needs Node.js >= 20 and the npm package 'allure' "
    "(`npm install --no-save allure` in this folder, or `npm install -g allure`), then rerun "
    "`mechtests report`."
)
NODE_HINT = (
    "Node.js not found: install Node.js >= 20 (e.g. `apt-get install nodejs npm`), then "
    "`npm install -g allure` (Allure 3), then rerun `mechtests report`."
)

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
