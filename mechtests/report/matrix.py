"""The claim matrix: rows are claims (grouped by area), columns are family / model pair.

A cell reads ``PASS 0.93>=0.8 c0.12``: the verdict, the metric (or the interval bound that was
compared) against the threshold, and the control's value. ``XFAIL`` marks an expected failure
listed in thresholds.yaml; ``XPASS`` means such a claim now holds (news: the run fails).
``INCONCLUSIVE`` means the experiment could not decide: a precondition failed (the cell names
it and its measured value, e.g. ``INCONCLUSIVE own_ie -0.02<0.1``) or the interval spans the
threshold (``INCONCLUSIVE 0.743..0.957 spans 0.95``); the run fails on it unless
``--allow-inconclusive``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mechtests.checkpoints.atomic import write_file_atomically
from mechtests.claims.model import OPS, higher_is_better, meets, negated

Record = Mapping[str, Any]
PACKAGES = (
    "mechtests",
    "torch",
    "transformers",
    "transformer-lens",
    "numpy",
    "scipy",
    "pytest",
    "pytest-xdist",
    "safetensors",
    "tokenizers",
)


def column_of(record: Record) -> str:
    return f"{record['family']} {record['pair'][0]}->{record['pair'][1]}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _inconclusive_text(record: Record) -> str | None:
    """``INCONCLUSIVE own_ie -0.02<0.1`` (the first failed precondition) or
    ``INCONCLUSIVE 0.743..0.957 spans 0.95`` (the interval contains the threshold)."""
    for check in record.get("preconditions") or []:
        if not check.get("holds"):
            sym = negated(check["op"])
            return (f"INCONCLUSIVE {check['quantity']} {_num(check['measured'])}{sym}"
                    f"{_num(check['value'])}")
    power, interval = record.get("power"), record.get("interval")
    if power and not power.get("decided") and interval:
        text = (f"INCONCLUSIVE {_num(interval[0])}..{_num(interval[1])} spans "
                f"{_num(record.get('threshold'))}")
        return text + (f" c{_num(record['control'])}" if record.get("control") is not None
                       else "")
    return None


def cell_text(record: Record) -> str:
    """Compact cell: verdict, compared number vs threshold, control; an INCONCLUSIVE cell
    names what could not be decided (a precondition, or an interval spanning the threshold)."""
    verdict = record["verdict"]
    if verdict == "INCONCLUSIVE":
        return _inconclusive_text(record) or verdict
    if record.get("metric") is None:
        return verdict
    metric = record["metric"]
    interval = record.get("interval")
    op = record.get("op") or "?"
    shown = metric
    if op not in OPS:
        return f"{verdict} {_num(metric)}"
    if interval:
        shown = interval[0] if higher_is_better(op) else interval[1]
    sym = op if meets(shown, op, record["threshold"]) else negated(op)
    text = f"{verdict} {_num(shown)}{sym}{_num(record['threshold'])}"
    if record.get("control") is not None:
        text += f" c{_num(record['control'])}"
    return text


def build_grid(
    records: Iterable[Record],
) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str], str]]:
    """Columns, (area, claim) rows and cells of the matrix."""
    columns: list[str] = []
    rows: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], str] = {}
    for rec in sorted(records, key=lambda r: (r["area"], r["claim_id"], r["family"], r["pair"])):
        col = column_of(rec)
        row = (rec["area"], rec["claim_id"])
        if col not in columns:
            columns.append(col)
        if row not in rows:
            rows.append(row)
        cells[(rec["claim_id"], col)] = cell_text(rec)
    columns.sort()
    return columns, rows, cells


def format_terminal(records: Sequence[Record], report_dir: str = "reports") -> list[str]:
    """The grid as terminal lines, then counts per verdict."""
    columns, rows, cells = build_grid(records)
    width0 = max(len(claim) for _, claim in rows) + 2
    widths = [
        max([len(c)] + [len(cells.get((claim, c), "")) for _, claim in rows]) + 2 for c in columns
    ]
    lines = ["", "mechtests claim matrix".center(width0 + sum(widths), "=")]
    lines.append("claim".ljust(width0) + "".join(c.ljust(w) for c, w in zip(columns, widths)))
    area = None
    for row_area, claim in rows:
        if row_area != area:
            area = row_area
            lines.append(f"[{area}]")
        lines.append(
            claim.ljust(width0)
            + "".join(cells.get((claim, c), "").ljust(w) for c, w in zip(columns, widths))
        )
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["verdict"]] = counts.get(rec["verdict"], 0) + 1
    lines.append("verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    lines.append(
        "cell = verdict, compared value (CI bound when an interval exists) vs threshold, "
        "c = control value; INCONCLUSIVE = a failed precondition or an interval that spans "
        f"the threshold; details in {report_dir}/claim_matrix.md"
    )
    return lines


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "packages": versions,
        "commit": _git_commit(),
    }


def to_markdown(records: Sequence[Record], meta: Mapping[str, Any]) -> str:
    """The matrix plus one detail row per result, as Markdown."""
    columns, rows, cells = build_grid(records)
    out = ["# mechtests claim matrix", ""]
    if meta.get("complete") is False:
        out += [f"> **INCOMPLETE RUN**: {meta.get('incomplete_reason', 'the run stopped early')}; "
                "these results are partial and are not a release gate.", ""]
    out += [
        f"Generated {meta['datetime']} · thresholds `{meta['thresholds']['path']}` "
        f"(sha256 `{meta['thresholds']['sha256'][:12]}`) · options {meta['options']}",
        "",
    ]
    out.append("| claim | " + " | ".join(columns) + " |")
    out.append("|---" * (len(columns) + 1) + "|")
    for _, claim in rows:
        out.append(
            f"| `{claim}` | " + " | ".join(cells.get((claim, c), "") for c in columns) + " |"
        )
    out += [
        "",
        "## Details",
        "",
        "| claim | family | pair | verdict | metric | interval | control | rule | source | why |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in sorted(records, key=lambda r: (r["area"], r["claim_id"], r["family"], r["pair"])):
        interval = rec.get("interval")
        iv = f"[{_num(interval[0])}, {_num(interval[1])}]" if interval else "-"
        rule = f"{rec.get('op', '')} {_num(rec.get('threshold'))}"
        if rec.get("control_margin") is not None:
            rule += f", margin {_num(rec['control_margin'])} over control"
        why = ((rec.get("expected_failure") if rec["verdict"] == "XFAIL" else None)
               or rec.get("message") or "").replace("|", "/")
        out.append(
            f"| `{rec['claim_id']}` | {rec['family']} | {'->'.join(rec['pair'])} | "
            f"{rec['verdict']} | {_num(rec.get('metric'))} | {iv} | "
            f"{_num(rec.get('control'))} ({rec.get('control_label', '')}) | {rule} | "
            f"{rec.get('source', '')} | {why} |"
        )
    arts = [(rec["claim_id"], a) for rec in records for a in rec.get("artifacts", [])]
    if arts:
        out += ["", "## Plots", ""] + [f"- `{cid}`: [{a}]({a})" for cid, a in arts]
    out += ["", "## Checkpoints", ""]
    for fam, roles in meta["checkpoints"].items():
        for role, fp in roles.items():
            out.append(f"- {fam}/{role}: `{fp}`")
    return "\n".join(out) + "\n"


def write_matrix(
    records: Sequence[Record],
    report_dir: Path,
    thresholds: Any,
    families: Mapping[str, Any],
    options: Mapping[str, Any],
    incomplete: str | None = None,
) -> list[Path]:
    """Write ``claim_matrix.json``, ``.md`` and ``.html`` (each atomically); return their paths.

    ``incomplete``: why the run stopped early; the reports then say so (``"complete": false``
    and ``"incomplete_reason"`` in the JSON, a banner in the Markdown and HTML)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    checkpoints: dict[str, dict[str, str]] = {}
    for rec in records:
        checkpoints.setdefault(rec["family"], {}).update(rec.get("checkpoints", {}))
    meta = {
        "version": 1,
        "complete": incomplete is None,
        **({"incomplete_reason": incomplete} if incomplete else {}),
        "datetime": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine_info": machine_info(),
        "thresholds": {"path": str(thresholds.path), "sha256": thresholds.sha256},
        "families": {
            name: {role: spec.ref for role, spec in fam.models.items()}
            for name, fam in families.items()
        },
        "checkpoints": checkpoints,
        "options": dict(options),
    }
    ordered = sorted(records, key=lambda r: (r["area"], r["claim_id"], r["family"], r["pair"]))
    json_path = report_dir / "claim_matrix.json"
    md_path = report_dir / "claim_matrix.md"
    write_file_atomically(json_path, json.dumps({**meta, "results": ordered}, indent=2,
                                                default=str))
    write_file_atomically(md_path, to_markdown(ordered, meta))
    from mechtests.report.html import write_html  # claim_matrix.html

    return [json_path, md_path, write_html(ordered, meta, report_dir)]
