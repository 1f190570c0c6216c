"""The validation table: claim x mutant -> expected verdict, observed verdict, metric.

A claim **discriminates** when it PASSes on a mutant expected to PASS (a known positive) and
FAILs on a mutant expected to FAIL (a known negative). XFAIL counts as FAIL and XPASS as PASS;
INCONCLUSIVE, ERROR and SKIP decide nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechtests.validation.expected import Expectation
from mechtests.validation.run import mutant_family_name

START = "<!-- validation-table:start -->"
END = "<!-- validation-table:end -->"


@dataclass(frozen=True)
class Cell:
    """One claim on one mutant."""

    expected: Expectation
    observed: str  # the run's verdict, or "-" when the run has no record
    metric: float | None
    message: str

    @property
    def agrees(self) -> bool | None:
        return self.expected.matches(self.observed)


@dataclass(frozen=True)
class Discrimination:
    """Whether a claim separates its known positives from its known negatives."""

    claim_id: str
    positives: tuple[str, ...]  # mutants expected to PASS
    negatives: tuple[str, ...]  # mutants expected to FAIL
    passed_positive: bool
    failed_negative: bool

    @property
    def discriminates(self) -> bool:
        return self.passed_positive and self.failed_negative

    def why_not(self, cells: Mapping[str, Cell]) -> str:
        if self.discriminates:
            return ""
        parts = []
        if not self.positives:
            parts.append("no known-positive mutant")
        elif not self.passed_positive:
            parts.append("known positive " + ", ".join(
                f"{m} {cells[m].observed}" for m in self.positives))
        if not self.negatives:
            parts.append("no known-negative mutant")
        elif not self.failed_negative:
            parts.append("known negative " + ", ".join(
                f"{m} {cells[m].observed}" for m in self.negatives))
        return "; ".join(parts)


Table = dict[str, dict[str, Cell]]  # claim id -> mutant -> cell


def build_table(records: Sequence[Mapping[str, Any]],
                expected: Mapping[str, Mapping[str, Expectation]],
                family: str, mutants: Sequence[str]) -> Table:
    """Join the run's records with the expectations (claims in expected.yaml order)."""
    by_key = {(r["claim_id"], r["family"]): r for r in records}
    table: Table = {}
    for claim_id, cells in expected.items():
        table[claim_id] = {}
        for mutant in mutants:
            record = by_key.get((claim_id, mutant_family_name(family, mutant)))
            table[claim_id][mutant] = Cell(
                expected=cells[mutant],
                observed=str(record["verdict"]) if record else "-",
                metric=record.get("metric") if record else None,
                message=str(record.get("message", "")) if record else "not run",
            )
    return table


def discrimination(table: Table) -> list[Discrimination]:
    """One :class:`Discrimination` per claim of ``table``."""
    out = []
    for claim_id, cells in table.items():
        pos = tuple(m for m, c in cells.items() if c.expected.verdict == "PASS")
        neg = tuple(m for m, c in cells.items() if c.expected.verdict == "FAIL")
        out.append(Discrimination(
            claim_id, pos, neg,
            passed_positive=any(cells[m].agrees is True for m in pos),
            failed_negative=any(cells[m].agrees is True for m in neg),
        ))
    return out


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan" if value is not None else ""
    return f"{value:.3g}"


def _mark(cell: Cell) -> str:
    return {True: "ok", False: "WRONG", None: "."}[cell.agrees]


def format_markdown(table: Table, family: str, header: str = "") -> list[str]:
    """The table as Markdown: one row per claim, one column per mutant, then the summary."""
    mutants = list(next(iter(table.values())))
    lines = [header] if header else []
    lines += [
        "Each cell: expected / observed verdict, the metric, and `ok` (as expected), `WRONG` "
        "(the opposite verdict) or `.` (nothing to compare: `any`, INCONCLUSIVE, ERROR).",
        "",
        "| claim | " + " | ".join(mutants) + " |",
        "|---|" + "---|" * len(mutants),
    ]
    for claim_id, cells in table.items():
        row = [" ".join(p for p in (f"{c.expected.verdict} / {c.observed}", _number(c.metric),
                                    _mark(c)) if p) for c in cells.values()]
        lines.append(f"| `{claim_id}` | " + " | ".join(row) + " |")
    results = discrimination(table)
    good = [d for d in results if d.discriminates]
    wrong = [(cid, m, c) for cid, cells in table.items() for m, c in cells.items()
             if c.agrees is False]
    lines += ["", f"**{len(good)} of {len(results)} claims discriminate on {family}** (PASS on a "
              "known-positive mutant and FAIL on a known-negative one). "
              f"{len(wrong)} cells contradict their expected verdict.", ""]
    for d in results:
        if not d.discriminates:
            lines.append(f"- `{d.claim_id}`: {d.why_not(table[d.claim_id])}")
    if wrong:
        lines += ["", "Cells that contradict their expectation:", ""]
        lines += [f"- `{cid}` on {m}: expected {c.expected.verdict} ({c.expected.reason}); "
                  f"observed {c.observed}: {c.message[:160]}" for cid, m, c in wrong]
    return lines


def format_terminal(table: Table, family: str) -> list[str]:
    """A compact fixed-width version for the terminal."""
    mutants = list(next(iter(table.values())))
    width = max(len(c) for c in table) + 2
    lines = ["claim".ljust(width) + "".join(m[:22].ljust(24) for m in mutants)]
    for claim_id, cells in table.items():
        row = [f"{c.expected.verdict[:4]}/{c.observed[:6]} {_mark(c)}" for c in cells.values()]
        lines.append(claim_id.ljust(width) + "".join(r.ljust(24) for r in row))
    results = discrimination(table)
    lines.append(f"{sum(d.discriminates for d in results)} of {len(results)} claims "
                 f"discriminate on {family}.")
    return lines


def write_into(path: Path, lines: Sequence[str]) -> None:
    """Put ``lines`` between the table markers of ``path`` (the rest of the file is kept); a
    file without markers gets them, with the table, appended."""
    block = "\n".join([START, *lines, END])
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
