"""``mechtests report``: render the reports of the last run without running anything.

    mechtests report                          re-render reports/claim_matrix.html from its JSON,
                                              and the Allure report if reports/allure-results exists
    mechtests report --alluredir DIR          the single-file Allure 3 report of DIR
                                              (into reports/allure-report/index.html)

Exit status: 0 when what was asked for was written; 1 otherwise (with one line saying why
and how to fix it, e.g. how to get Allure 3 when Node or the npm package is missing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_report_subparser(sub: Any) -> None:
    """Add the ``report`` subcommand to the ``mechtests`` parser's subparsers."""
    report = sub.add_parser(
        "report", help="render the HTML claim matrix and a single-file Allure report",
        description="Re-render claim_matrix.html from claim_matrix.json and render Allure "
                    "results (from `mechtests run --alluredir DIR`) as one HTML file with "
                    "Allure 3 (Node.js + the npm package 'allure').",
    )
    report.add_argument("--claim-report", default="reports", metavar="DIR",
                        help="folder of claim_matrix.json (as for the run). Default: reports.")
    report.add_argument("--alluredir", default=None, metavar="DIR",
                        help="Allure results folder. Default: <claim-report>/allure-results "
                             "when it exists.")
    report.add_argument("--output", default=None, metavar="DIR",
                        help="where the Allure report goes (index.html). "
                             "Default: <claim-report>/allure-report.")


def run_report(args: argparse.Namespace) -> int:
    """Run ``mechtests report``; print one line per thing done or missing."""
    from mechtests.report.allure import render_allure
    from mechtests.report.html import write_html

    report_dir = Path(args.claim_report)
    status = 0
    matrix = report_dir / "claim_matrix.json"
    if matrix.is_file():
        data = json.loads(matrix.read_text())
        meta = {k: v for k, v in data.items() if k != "results"}
        print(f"claim matrix: {write_html(data.get('results', []), meta, report_dir)}")
    elif args.alluredir is None:
        print(f"no claim matrix at {matrix}. Fix: run `mechtests run --claim-report "
              f"{report_dir}` first.")
        status = 1
    results = Path(args.alluredir) if args.alluredir else report_dir / "allure-results"
    if args.alluredir is None and not results.is_dir():
        print(f"no Allure results at {results} (skipped). To get them: `mechtests run "
              f"--alluredir {results}`, then `mechtests report`.")
        return status
    output = Path(args.output) if args.output else report_dir / "allure-report"
    code, line = render_allure(results, output)
    print(line)
    return max(status, code)
