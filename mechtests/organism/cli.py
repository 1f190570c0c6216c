"""``mechtests organism build [--size ci|gpu] [--seed N] [--max-seeds K] [--out DIR] [--part P]``.

Trains the organism (base, SFT, instruct, control), checks its gates (retrying seeds), and
writes the four checkpoints plus ``card.json`` / ``README.md``. Without ``--out`` it builds
into the cache (``--cache-dir``, default the user cache), where ``organism:<size>/<role>``
references find it. Exit status 0 on success, 1 when every seed failed its gates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mechtests.organism.checkpoints import DEFAULT_SEED
from mechtests.organism.config import SIZES


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``organism build`` to the ``mechtests`` command."""
    org = subparsers.add_parser("organism", help="train the built-in organism family",
                                description="Train the organism family.")
    sub = org.add_subparsers(dest="organism_command", required=True)
    b = sub.add_parser("build", help="train base, SFT, instruct and control; check the gates",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    b.add_argument("--size", default="ci", choices=[s for s in SIZES if s not in ("broken",)],
                   help="recipe size. Default: ci.")
    b.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"first seed tried. Default: {DEFAULT_SEED} (the shipped organism's).")
    b.add_argument("--out", default=None,
                   help="output directory. Default: the cache entry organism:<size> uses.")
    b.add_argument("--cache-dir", default=None, help="cache directory. Default: user cache.")
    b.add_argument("--device", default="cpu", help="torch device. Default: cpu.")
    b.add_argument("--max-seeds", type=int, default=None,
                   help="how many seeds (seed, seed+1, ...) to try per role before failing. "
                        "Default: the size's max_seeds (4 for ci).")
    b.add_argument("--part", default="all", choices=["all", "chain", "control"],
                   help="build only base/SFT/instruct (chain) or only the control base, e.g. in "
                        "two parallel processes with the same --out. Default: all.")
    return b


def run(args: argparse.Namespace) -> int:
    """Run ``organism build``; prints the gate table."""
    from mechtests.errors import GateError
    from mechtests.organism.build import build, render_card
    from mechtests.organism.checkpoints import cache_root
    from mechtests.organism.config import size_config

    cfg = size_config(args.size)
    if args.max_seeds is not None:
        if args.max_seeds < 1:
            print(f"error: --max-seeds must be >= 1, got {args.max_seeds}. Fix: e.g. "
                  "--max-seeds 1.", file=sys.stderr)
            return 2
        cfg = cfg.replace(max_seeds=args.max_seeds)
    if args.out:
        out = Path(args.out)
    else:
        from mechtests.checkpoints.cache_dir import default_cache_dir

        out = cache_root(cfg, Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    try:
        result = build(cfg, args.seed, out, device=args.device, part=args.part,
                       log=lambda msg: print(msg, flush=True))
    except GateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.card:
        print(render_card(result.card))
    print(f"organism ({args.part}) written to {out}")
    return 0
