"""``mechtests validate``: build the known-answer mutants, run the claims on them, write the table.

    mechtests validate                                  # every mutant of the organism
    mechtests validate --mutants identity,control -k "truth.direction or overlap"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mechtests.errors import MechTestsError


def add_validate_subparser(sub: Any) -> None:
    """Register ``validate`` on the ``mechtests`` subcommand parser."""
    from mechtests.families import max_examples_arg
    from mechtests.validation.mutants import MUTANTS

    parser = sub.add_parser(
        "validate",
        help="check every claim on known-answer mutants (weight surgery) and write the table",
        description="Build known-answer mutants of a family by weight surgery (into the cache), "
        "run the claim suite on each as the family's post-trained model, and print and write "
        "the table claim x mutant -> expected verdict (mechtests/validation/expected.yaml), "
        "observed verdict and metric, with how many claims discriminate.",
    )
    parser.add_argument("--model-family", default="organism", metavar="NAME",
                        help="family whose checkpoints the mutants are made from (needs base, "
                        "instruct and, for the control mutant, control). Default: organism.")
    parser.add_argument("--families-file", default=None, metavar="PATH",
                        help="extra YAML file of families to take --model-family from. "
                        "Default: none (the packaged families.yaml).")
    parser.add_argument("--mutants", default=None, metavar="A,B",
                        help=f"comma-separated mutants to build and run, of: {', '.join(MUTANTS)}. "
                        "Default: all.")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="Markdown file that receives the table between its "
                        "'validation-table' markers (the rest of the file is kept). "
                        "Default: none (print only).")
    parser.add_argument("--work-dir", default="reports/validation", metavar="DIR",
                        help="where the generated families file, the suite's claim matrix and "
                        "its log go. Default: reports/validation.")
    parser.add_argument("--mechtests-cache", default=None, metavar="DIR",
                        help="cache for mutants, built checkpoints and activations. Default: "
                        "$MECHTESTS_CACHE or the user cache dir (~/.cache/mechtests).")
    parser.add_argument("-k", dest="keyword", default=None, metavar="EXPR",
                        help="pytest -k expression selecting the claims to run (e.g. "
                        "'truth.direction'). Default: every claim.")
    parser.add_argument("--max-examples", type=max_examples_arg, default=None, metavar="N|all",
                        help="subsample every dataset to at most N examples (faster, noisier; "
                        "'all': every example). Default: the family's max_examples, else all.")


def run_validate(args: argparse.Namespace) -> int:
    """Build, run, print and write; the exit status is 1 when a cell contradicts its
    expectation, else 0."""
    try:
        return _validate(args)
    except MechTestsError as exc:
        print(f"mechtests validate: {exc}")
        return 2


def _validate(args: argparse.Namespace) -> int:
    from mechtests.checkpoints.cache_dir import default_cache_dir
    from mechtests.families import load_families, select_family
    from mechtests.validation import run, table
    from mechtests.validation.expected import load_expected
    from mechtests.validation.mutants import build_mutant, parse_mutants

    mutants = parse_mutants(args.mutants)
    families = load_families(Path(args.families_file) if args.families_file else None)
    family = select_family(families, args.model_family)
    cache = Path(args.mechtests_cache) if args.mechtests_cache else default_cache_dir()
    work = Path(args.work_dir)
    start = time.monotonic()
    checkpoints = {}
    for name in mutants:
        checkpoints[name] = build_mutant(family, name, cache)
        print(f"[validate] mutant {name}: {checkpoints[name]} ({time.monotonic() - start:.0f} s)")
    families_file = run.write_families_file(family, checkpoints, work)
    extra = (["-k", args.keyword] if args.keyword else []) + (
        ["--max-examples", str(args.max_examples)] if args.max_examples else [])
    names = [run.mutant_family_name(family.name, m) for m in mutants]
    command = run.suite_command(families_file, names, work / "report", cache, extra)
    print(f"[validate] running the claims: {' '.join(command)}")
    records = run.run_suite(command, work / "report", work / "suite.log")
    print(f"[validate] suite done ({time.monotonic() - start:.0f} s); log {work / 'suite.log'}")
    expected = load_expected()
    ran = {r["claim_id"] for r in records}
    expected = {cid: cells for cid, cells in expected.items() if cid in ran}
    result = table.build_table(records, expected, family.name, mutants)
    for line in table.format_terminal(result, family.name):
        print(line)
    if args.out:
        header = (f"Generated by `mechtests validate --model-family {family.name} --mutants "
                  f"{','.join(mutants)}` ({time.strftime('%Y-%m-%d')}, "
                  f"{time.monotonic() - start:.0f} s).")
        table.write_into(Path(args.out), ["", header, "",
                                          *table.format_markdown(result, family.name), ""])
        print(f"[validate] table written into {args.out}")
    wrong = any(c.agrees is False for cells in result.values() for c in cells.values())
    return 1 if wrong else 0
