"""The claim matrix as one self-contained HTML file (``claim_matrix.html``).

Rows are claims grouped by area, columns are family and model pair, as in the terminal and
Markdown matrices (:mod:`mechtests.report.matrix`). Each cell shows the verdict (coloured), the
compared value against the threshold (the interval's bound when there is one, as in the
terminal), the metric with its interval and n, the control with the required margin, links to
the claim's plots, and a details panel (native ``<details>``: statement, paper source,
threshold source, note, message, checkpoints). When the run was compared with a baseline
(:mod:`mechtests.report.baseline`), every column gets a second ``drift`` cell: a verdict of its
own, separate from the claim's.

No server and no network: CSS and a few lines of JavaScript are inline; plots are linked by
paths relative to the report directory (where the HTML file lives), so the folder can be zipped
and opened anywhere from disk. Without JavaScript everything still shows; the script only adds
live counts, an "expand all" button and a filter for problems.

Example:
    >>> html = render_html([], {"datetime": "2025-01-01T00:00:00+00:00"})
    >>> html.startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mechtests.claims.model import OPS, higher_is_better, meets, negated

__all__ = ["VERDICTS", "cell_parts", "render_html", "write_html"]

_SYMBOLS = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}

Record = Mapping[str, Any]
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE", "XFAIL", "XPASS", "ERROR", "SKIP", "INFO")
_IMAGE = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    return "nan" if math.isnan(x) else f"{x:.3g}"


def column_key(record: Record) -> tuple[str, str]:
    """(family, "ref->post") of a record: its column."""
    return record["family"], "->".join(record["pair"])


def cell_parts(record: Record) -> dict[str, str]:
    """The texts of one cell: ``compare`` (value op threshold), ``metric``, ``control``.

    Example:
        >>> r = {"verdict": "PASS", "metric": 0.93, "interval": [0.9, 0.96], "op": ">=",
        ...      "threshold": 0.8, "control": 0.12, "control_margin": 0.3, "n": 64}
        >>> cell_parts(r)["compare"], cell_parts(r)["control"]
        ('0.9 ≥ 0.8', 'control 0.12 · margin 0.3')
    """
    metric, op, threshold = record.get("metric"), record.get("op"), record.get("threshold")
    interval = record.get("interval")
    parts = {"compare": "", "metric": "", "control": ""}
    if metric is None:
        return parts
    shown = float(metric)
    if interval and op in OPS:
        shown = float(interval[0] if higher_is_better(op) else interval[1])
    if threshold is not None and op in OPS:
        sym = _SYMBOLS[op if meets(shown, op, threshold) else negated(op)]
        parts["compare"] = f"{_fmt(shown)} {sym} {_fmt(threshold)}"
    else:
        parts["compare"] = _fmt(shown)
    metric_text = f"metric {_fmt(metric)}"
    if interval:
        metric_text += f" · CI [{_fmt(interval[0])}, {_fmt(interval[1])}]"
    if record.get("n") is not None:
        metric_text += f" · n {record['n']}"
    parts["metric"] = metric_text
    if record.get("control") is not None:
        control = f"control {_fmt(record['control'])}"
        if record.get("control_margin") is not None:
            control += f" · margin {_fmt(record['control_margin'])}"
        parts["control"] = control
    return parts


def _exact(x: Any) -> str:
    """A number as ``repr(float)`` (round-trips exactly; compared with the JSON in tests)."""
    return "" if x is None else repr(float(x))


def _href(path: str) -> str:
    p = Path(path)
    return p.as_uri() if p.is_absolute() else quote(path)


def _details(record: Record) -> str:
    rows = [
        ("statement", record.get("statement")),
        ("paper", record.get("paper")),
        ("metric", record.get("metric_name")),
        ("control", record.get("control_label")),
        ("rule", f"{record.get('op', '')} {_fmt(record.get('threshold'))}"
                 + (f", margin {_fmt(record['control_margin'])} over control"
                    if record.get("control_margin") is not None else "")),
        ("threshold source", record.get("source")),
        ("note", record.get("note")),
        ("expected failure", record.get("expected_failure")),
        ("message", record.get("message")),
        ("preconditions", "; ".join(
            f"{'ok' if c.get('holds') else 'FAILED'} {c.get('why')}: {c.get('quantity')} "
            f"{_fmt(c.get('measured'))} {c.get('op')} {_fmt(c.get('value'))} ({c.get('source')})"
            for c in record.get("preconditions") or [])),
        ("power", "" if not record.get("power") else
         f"interval half-width {_fmt(record['power'].get('half_width'))}, distance to the "
         f"threshold {_fmt(record['power'].get('distance'))}"
         + ("" if record["power"].get("decided") else " (the interval contains the threshold)")),
        ("checkpoints", ", ".join(f"{k} {v}"
                                  for k, v in (record.get("checkpoints") or {}).items())),
        ("seconds", record.get("seconds")),
    ]
    drift = record.get("drift")
    if drift:
        rows.append(("baseline", drift.get("message")))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows if v not in (None, ""))
    images = "".join(
        f'<a href="{_e(_href(a))}"><img src="{_e(_href(a))}" alt="{_e(a)}" loading="lazy"></a>'
        for a in record.get("artifacts") or [] if a.lower().endswith(_IMAGE)
    )
    return (f'<details><summary>details</summary><dl>{items}</dl>'
            f'{f"<div class=thumbs>{images}</div>" if images else ""}</details>')


def _cell(record: Record) -> str:
    verdict = str(record["verdict"])
    family, pair = column_key(record)
    parts = cell_parts(record)
    attrs = {
        "class": f"cell v-{verdict}", "data-claim": record["claim_id"],
        "data-column": f"{family} {pair}", "data-verdict": verdict,
        "data-metric": _exact(record.get("metric")),
        "data-control": _exact(record.get("control")),
        "data-threshold": _exact(record.get("threshold")),
        "title": record.get("message") or "",
    }
    body = [f'<span class="verdict">{_e(verdict)}</span>']
    if parts["compare"]:
        body.append(f'<div class="cmp">{_e(parts["compare"])}</div>')
    for key in ("metric", "control"):
        if parts[key]:
            body.append(f'<div class="sub {key}">{_e(parts[key])}</div>')
    if record.get("message") and (record.get("metric") is None or verdict == "INCONCLUSIVE"):
        body.append(f'<div class="sub msg">{_e(str(record["message"])[:160])}</div>')
    arts = record.get("artifacts") or []
    if arts:
        links = " ".join(f'<a href="{_e(_href(a))}">{_e(Path(a).name)}</a>' for a in arts)
        body.append(f'<div class="plots">plots: {links}</div>')
    body.append(_details(record))
    attr = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    return f"<td {attr}>{''.join(body)}</td>"


def _drift_cell(record: Record | None) -> str:
    if record is None:
        return '<td class="drift empty"></td>'
    drift = record.get("drift") or {}
    status = str(drift.get("status", "n/a"))
    family, pair = column_key(record)
    changes = drift.get("changes") or []
    worst = max(changes, key=lambda c: abs(c["delta"]), default=None)
    detail = ""
    if worst is not None:
        detail = (f"{worst['field']} {_fmt(worst['old'])} → {_fmt(worst['new'])} "
                  f"(tol {drift.get('tolerance')})")
    return (f'<td class="drift d-{_e(status.replace("/", ""))}" '
            f'data-claim="{_e(record["claim_id"])}" data-column="{_e(family)} {_e(pair)}" '
            f'data-drift="{_e(status)}" '
            f'title="{_e(drift.get("message"))}"><span class="verdict">{_e(status)}</span>'
            f'{f"<div class=sub>{_e(detail)}</div>" if detail else ""}</td>')


_CSS = """
:root{--pass:#d9f2dd;--pass-b:#1e7b34;--fail:#f9d6d5;--fail-b:#b3261e;--xfail:#fcefc7;
--xfail-b:#8a6100;--xpass:#eadcf8;--xpass-b:#6a2fa8;--error:#ffd8b5;--error-b:#a14b00;
--skip:#eceff1;--skip-b:#546e7a;--info:#dbe9fb;--info-b:#1f5fa8;--inconclusive:#e3e4f7;
--inconclusive-b:#3f3d99}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em;color:#1b1b1b}
h1{font-size:1.4em;margin:0 0 .3em}.meta{color:#555;font-size:.85em;margin:.2em 0}
.badge{display:inline-block;border-radius:3px;padding:0 .4em;margin-right:.3em;font-weight:600;
border:1px solid transparent}
table.matrix{border-collapse:collapse;margin-top:.8em}
.matrix th,.matrix td{border:1px solid #c9cdd1;padding:.35em .5em;vertical-align:top;
text-align:left}
.matrix thead th{background:#f3f4f6;position:sticky;top:0}
.matrix th.family{text-align:center;font-size:1.05em}
.matrix tr.area th{background:#263238;color:#fff;text-transform:uppercase;letter-spacing:.05em;
font-size:.8em}
.matrix th.claim code{font-weight:600}.matrix th.claim .mname{color:#555;font-weight:400;
font-size:.8em;max-width:22em}
.cell{min-width:12em;max-width:22em}.cell .verdict,.drift .verdict{font-weight:700}
.cell .cmp{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:1.05em}
.sub{font-size:.8em;color:#333}.plots{font-size:.8em}.plots a{margin-right:.4em}
details{font-size:.8em;margin-top:.2em}details dl{margin:.3em 0;display:grid;
grid-template-columns:max-content 1fr;gap:.1em .6em}details dt{font-weight:600;color:#444}
details dd{margin:0;white-space:pre-wrap}
.thumbs img{max-width:20em;border:1px solid #ccc;margin:.2em}
.v-PASS{background:var(--pass)}.v-PASS .verdict{color:var(--pass-b)}
.v-FAIL{background:var(--fail)}.v-FAIL .verdict{color:var(--fail-b)}
.v-XFAIL{background:var(--xfail)}.v-XFAIL .verdict{color:var(--xfail-b)}
.v-XPASS{background:var(--xpass)}.v-XPASS .verdict{color:var(--xpass-b)}
.v-ERROR{background:var(--error)}.v-ERROR .verdict{color:var(--error-b)}
.v-SKIP{background:var(--skip)}.v-SKIP .verdict{color:var(--skip-b)}
.v-INFO{background:var(--info)}.v-INFO .verdict{color:var(--info-b)}
.v-INCONCLUSIVE{background:var(--inconclusive)}.v-INCONCLUSIVE .verdict{color:var(--inconclusive-b)}
.drift{font-size:.85em;min-width:6em}.d-ok{background:#eef8f0}.d-drift{background:var(--fail)}
.d-drift .verdict{color:var(--fail-b)}.d-new{background:var(--xfail)}.d-na{background:var(--skip)}
.empty{background:repeating-linear-gradient(45deg,#fafafa,#fafafa 4px,#f0f0f0 4px,#f0f0f0 8px)}
.controls{margin:.6em 0;font-size:.9em}.controls button{margin-right:.6em}
body.problems tr.row:not(.has-problem){display:none}
.legend{font-size:.8em;color:#444;max-width:70em}
"""

_JS = """
(function(){
  var counts={};
  document.querySelectorAll('td.cell[data-verdict]').forEach(function(td){
    var v=td.getAttribute('data-verdict');counts[v]=(counts[v]||0)+1;});
  var drifts={};
  document.querySelectorAll('td.drift[data-drift]').forEach(function(td){
    var v=td.getAttribute('data-drift');drifts[v]=(drifts[v]||0)+1;});
  function fmt(c){return Object.keys(c).sort().map(function(k){return c[k]+' '+k;}).join(', ');}
  var live=document.getElementById('live-counts');
  live.textContent='cells: '+fmt(counts)+(Object.keys(drifts).length?' · drift: '+fmt(drifts):'');
  var bad=['FAIL','ERROR','XPASS','INCONCLUSIVE'];
  document.querySelectorAll('tr.row').forEach(function(tr){
    var p=false;
    tr.querySelectorAll('td.cell').forEach(function(td){
      if(bad.indexOf(td.getAttribute('data-verdict'))>=0)p=true;});
    tr.querySelectorAll('td.drift').forEach(function(td){
      var d=td.getAttribute('data-drift');if(d==='drift'||d==='new')p=true;});
    if(p)tr.classList.add('has-problem');
  });
  document.getElementById('expand').addEventListener('click',function(){
    var open=this.getAttribute('data-open')!=='1';this.setAttribute('data-open',open?'1':'0');
    this.textContent=open?'collapse all details':'expand all details';
    document.querySelectorAll('td details').forEach(function(d){d.open=open;});});
  document.getElementById('problems').addEventListener('change',function(){
    document.body.classList.toggle('problems',this.checked);});
  document.body.setAttribute('data-ready','1');
})();
"""


def _counts(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _header(meta: Mapping[str, Any], records: Sequence[Record], has_drift: bool) -> str:
    parts = ['<header><h1>mechtests claim matrix</h1>']
    if meta.get("complete") is False:  # a run that stopped early (Ctrl-C, -x, a crash)
        parts.append(f'<p class="incomplete" id="incomplete"><strong>INCOMPLETE RUN</strong>: '
                     f'{_e(meta.get("incomplete_reason", "the run stopped early"))}; these '
                     'results are partial and are not a release gate.</p>')
    line = f"Generated {_e(meta.get('datetime', ''))}"
    thresholds = meta.get("thresholds") or {}
    if thresholds:
        line += (f" · thresholds <code>{_e(thresholds.get('path'))}</code> (sha256 "
                 f"<code>{_e(str(thresholds.get('sha256', ''))[:12])}</code>)")
    commit = (meta.get("machine_info") or {}).get("commit")
    if commit:
        line += f" · commit <code>{_e(commit[:12])}</code>"
    parts.append(f'<p class="meta">{line}</p>')
    if meta.get("options"):
        opts = ", ".join(f"{k}={v}" for k, v in meta["options"].items())
        parts.append(f'<p class="meta">options: {_e(opts)}</p>')
    for fam, roles in (meta.get("families") or {}).items():
        refs = "; ".join(f"{r}: {ref}" for r, ref in roles.items())
        parts.append(f'<p class="meta">{_e(fam)}: {_e(refs)}</p>')
    counts = _counts([str(r["verdict"]) for r in records])
    badges = "".join(f'<span class="badge v-{_e(v)}">{n} {_e(v)}</span>' for v, n in counts.items())
    parts.append(f'<p class="summary" id="counts">verdicts: {badges}</p>')
    if has_drift:
        files = sorted({str((r.get("drift") or {}).get("file", "")) for r in records} - {""})
        dcounts = _counts([str((r.get("drift") or {}).get("status", "n/a")) for r in records])
        dbadges = "".join(f'<span class="badge d-{_e(k.replace("/", ""))}">{n} {_e(k)}</span>'
                          for k, n in dcounts.items())
        parts.append(f'<p class="summary" id="drift-counts">baseline '
                     f'<code>{_e(", ".join(files))}</code>: {dbadges}</p>')
    parts.append('<p class="meta" id="live-counts"></p>')
    parts.append(
        '<p class="legend">Cell: verdict; compared value (the interval\'s bound: lower for ≥, '
        'upper for ≤; the metric when there is no interval) against the threshold; the metric '
        'with its interval and n; the control and the margin the metric must beat it by. '
        'XFAIL = expected failure (thresholds.yaml); XPASS = an expected failure now holds '
        '(fails the run). INCONCLUSIVE = the experiment could not decide: a precondition '
        '(thresholds.yaml) failed, or the interval contains the threshold (half-width vs '
        'distance in the cell); fails the run unless --allow-inconclusive. '
        'drift = change beyond the claim\'s tolerance against the baseline; '
        'new = not in the baseline (both fail the run).</p>'
        '<div class="controls"><button id="expand" type="button">expand all details</button>'
        '<label><input type="checkbox" id="problems"> only rows with a failure or drift'
        '</label></div></header>'
    )
    return "".join(parts)


def render_html(records: Sequence[Record], meta: Mapping[str, Any]) -> str:
    """The whole page for ``records`` (dicts of ``ClaimRecord``) and the matrix's ``meta``."""
    has_drift = any(r.get("drift") for r in records)
    columns = sorted({column_key(r) for r in records})
    families: dict[str, list[str]] = {}
    for fam, pair in columns:
        families.setdefault(fam, []).append(pair)
    span = 2 if has_drift else 1
    head = [f'<thead><tr><th rowspan="{3 if has_drift else 2}" class="corner">claim</th>']
    head += [f'<th class="family" colspan="{len(pairs) * span}">{_e(fam)}</th>'
             for fam, pairs in families.items()]
    head.append("</tr><tr>")
    head += [f'<th class="pair" colspan="{span}" data-column="{_e(fam)} {_e(pair)}">'
             f'{_e(pair.replace("->", " → "))}</th>' for fam, pair in columns]
    head.append("</tr>")
    if has_drift:
        head.append("<tr>" + '<th>claim</th><th>drift</th>' * len(columns) + "</tr>")
    head.append("</thead>")
    by_cell = {(r["claim_id"], column_key(r)): r for r in records}
    rows: dict[str, dict[str, Record]] = {}
    for r in sorted(records, key=lambda r: (r["area"], r["claim_id"])):
        rows.setdefault(r["area"], {}).setdefault(r["claim_id"], r)
    body = ["<tbody>"]
    width = 1 + len(columns) * span
    for area, claims in rows.items():
        body.append(f'<tr class="area"><th colspan="{width}">{_e(area)}</th></tr>')
        for claim_id, first in claims.items():
            body.append(
                f'<tr class="row" data-claim="{_e(claim_id)}"><th class="claim" scope="row" '
                f'title="{_e(first.get("statement"))}"><code>{_e(claim_id)}</code>'
                f'<div class="mname">{_e(first.get("metric_name"))}</div></th>'
            )
            for col in columns:
                rec = by_cell.get((claim_id, col))
                body.append(_cell(rec) if rec else '<td class="cell empty"></td>')
                if has_drift:
                    body.append(_drift_cell(rec))
            body.append("</tr>")
    body.append("</tbody>")
    table = f'<table class="matrix" id="matrix">{"".join(head)}{"".join(body)}</table>'
    if not records:
        table = '<p id="empty">No claim results in this run.</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>mechtests claim matrix</title><style>{_CSS}</style></head><body>"
        f"{_header(meta, records, has_drift)}{table}<script>{_JS}</script></body></html>\n"
    )


def write_html(records: Sequence[Record], meta: Mapping[str, Any], report_dir: Path) -> Path:
    """Write ``claim_matrix.html`` into ``report_dir`` (beside ``claim_matrix.json``)."""
    path = Path(report_dir) / "claim_matrix.html"
    from mechtests.checkpoints.atomic import write_file_atomically

    write_file_atomically(path, render_html(records, meta))
    return path
