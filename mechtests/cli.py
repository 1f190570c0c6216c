"""The ``mechtests`` command.

    mechtests run [PYTEST_ARGS...]     run the claim suite (pytest --pyargs mechtests.suite)
    mechtests families                 list the model families and their checkpoints
    mechtests report [--alluredir DIR] HTML claim matrix + single-file Allure 3 report
    mechtests organism build ...       train the organism family (base, SFT, instruct, control)
    mechtests validate [--mutants A,B] claims on known-answer mutants: expected vs observed
    mechtests datasets fetch [--dest]  download the paper's datasets, checked by sha256
    mechtests calibrate --model-family F  choose F's refusal site and coefficients (training data)

``mechtests run`` passes every argument on to pytest, so all plugin options work, e.g.
``mechtests run --model-family tiny -n 2``. Its exit status is pytest's: non-zero when a claim
fails, which is what a release gate wants.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mechtests.bench.cli import add_bench_subparser, run_bench
from mechtests.errors import MechTestsError


def _run(pytest_args: Sequence[str]) -> int:
    import pytest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = ["--pyargs", "mechtests.suite", "-p", "no:cacheprovider", "-q", *pytest_args]
    if not any(str(a).startswith("--rootdir") for a in pytest_args):
        # test ids read mechtests/suite/test_claims.py::... wherever the datasets or reports
        # live (pytest would otherwise root them at the common ancestor of path arguments)
        args.append(f"--rootdir={Path(__file__).resolve().parent.parent}")
    return int(pytest.main(args))


def _families(families_file: str | None) -> int:
    from pathlib import Path

    from mechtests.families import load_families
    from mechtests.families.shape import LAYERS_ENV, parse_shape_layers

    depth = parse_shape_layers(os.environ.get(LAYERS_ENV))  # as a pytest run would cut them
    families = load_families(Path(families_file) if families_file else None, depth)
    for name, fam in sorted(families.items()):
        print(f"{name}: {fam.description}")
        for role, spec in fam.models.items():
            print(f"    {role:9s} {spec.ref}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechtests",
        description="Mechanistic-interpretability claims about post-training as pytest tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the claim suite; all further arguments go to pytest",
        description="Run the claim suite and print the claim matrix. Every argument is passed "
        "to pytest (see `pytest --help`, group 'mechtests').",
    )
    run.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="arguments for pytest, e.g. --model-family tiny -n 2",
    )
    fams = sub.add_parser(
        "families",
        help="list the model families",
        description="List the model families and their checkpoint references.",
    )
    fams.add_argument(
        "--families-file", default=None, help="extra YAML file of families. Default: none."
    )
    from mechtests.report.cli import add_report_subparser

    add_report_subparser(sub)
    add_bench_subparser(sub)
    from mechtests.validation.cli import add_validate_subparser

    add_validate_subparser(sub)
    from mechtests.data.fetch import add_datasets_subparser

    add_datasets_subparser(sub)
    from mechtests.measures.refusal.calibrate import add_calibrate_subparser

    add_calibrate_subparser(sub)
    try:
        from mechtests.organism.cli import add_subparser
    except ImportError:  # organism package not available
        pass
    else:
        add_subparser(sub)
    from mechtests.posttrain.cli import add_subparser as add_posttrain_subparser

    add_posttrain_subparser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # pass everything after `run` to pytest untouched
        return _run(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except MechTestsError as exc:  # a user error: one line, no traceback
        print(f"ERROR: {exc}", file=sys.stderr)
        return 4


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "families":
        return _families(args.families_file)
    if args.command == "bench":
        return run_bench(args)
    if args.command == "datasets":
        from mechtests.data.fetch import run_datasets

        return run_datasets(args)
    if args.command == "calibrate":
        from mechtests.measures.refusal.calibrate import run_calibrate

        return run_calibrate(args)
    if args.command == "report":
        from mechtests.report.cli import run_report

        return run_report(args)
    if args.command == "validate":
        from mechtests.validation.cli import run_validate

        return run_validate(args)
    if args.command == "organism":
        from mechtests.organism.cli import run as run_organism

        return int(run_organism(args))
    if args.command == "posttrain":
        from mechtests.posttrain.cli import run as run_posttrain

        return run_posttrain(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
