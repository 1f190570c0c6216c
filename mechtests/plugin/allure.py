"""Allure's pytest side: every claim test carries its family, models, claim, verdict and
plots as Allure parameters, labels and attachments (the module docstring of
:mod:`mechtests.report.allure` describes the report they make)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mechtests.plugin.recorder import RECORD_KEY

__all__ = ["AllureClaims", "allure_active", "attach_record", "register_allure"]

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


