"""``mechtests bench``: the claim matrix of one family, timed per phase.

Runs every claim's measure function on every model pair of the family (the same cases as
``mechtests run``, grouped by area) inside a :class:`~mechtests.bench.phases.PhaseRecorder`,
and writes ``bench_<family>.json`` and ``bench_<family>.md`` to ``--out`` and prints the table:
per phase (load, activation collection, patching sweep, cross-model patching, direction
selection, probes, steering, generation, entropy neurons, other) the exclusive wall time, the
items processed and their rate, the peak memory, and for the model-bound phases the FLOP rate
and its share of the bf16 peak (:mod:`mechtests.bench.flops`).

Caches: checkpoints come from the usual cache (``--cache``, built once), but activations,
patching maps, steering and generation results go to a fresh scratch directory, so every run
measures the work, never a cache hit. Verdicts are not computed (see ``mechtests run``).

Real-shape families (``<preset>-shape``, :mod:`mechtests.families.shape`) default to bfloat16;
``--shape-layers N`` cuts them to ``N`` layers for a CPU.

Example::

    mechtests bench --model-family organism --threads 1
    mechtests bench --model-family llama31-shape --shape-layers 2 --max-examples 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mechtests.bench.phases import PhaseRecorder
    from mechtests.claims.model import Claim
    from mechtests.families import Family
    from mechtests.measures.context import FamilyContext, RunOptions

__all__ = ["add_bench_subparser", "run_bench"]

AREA_ORDER = ("truth", "knowledge", "crossmodel", "refusal", "confidence")


def add_bench_subparser(sub: Any) -> None:
    """The ``bench`` sub-command's arguments."""
    from mechtests.families import max_examples_arg

    p = sub.add_parser(
        "bench", help="time the claim matrix of a family per phase",
        description="Run every claim area on one family and report, per phase, wall time, "
                    "items/s, peak memory and (patching, generation) the share of the bf16 peak "
                    "FLOP/s. Writes bench_<family>.json and .md to --out.")
    p.add_argument("--model-family", default="organism", metavar="NAME",
                   help="family to run (e.g. organism, tiny, llama31-shape). Default: organism.")
    p.add_argument("--families-file", default=None, metavar="PATH",
                   help="extra YAML file of families. Default: none.")
    p.add_argument("--shape-layers", type=int, default=None, metavar="N",
                   help="cut a <preset>-shape family to N layers (layer settings scaled). "
                        "Default: the real depth.")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N. Default: auto.")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="model dtype; auto = the shape's dtype for -shape families (bfloat16 "
                        "for the paper presets, as the paper ran), else float32. Default: auto.")
    p.add_argument("--backend", default="hf", choices=("hf", "transformer-lens"),
                   help="model backend. Default: hf.")
    p.add_argument("--max-examples", type=max_examples_arg, default=None, metavar="N|all",
                   help="subsample every dataset to at most N examples ('all': every "
                        "example). Default: the family's max_examples, else all.")
    p.add_argument("--areas", default=None, metavar="A,B",
                   help=f"comma-separated areas ({', '.join(AREA_ORDER)}). Default: all.")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="checkpoint cache (organism, tiny and shape builds). Default: "
                        "$MECHTESTS_CACHE or the user cache dir.")
    p.add_argument("--datasets", default=None, metavar="DIR",
                   help="the paper's datasets (folder holding du2025/), for families with "
                        "datasets: paper. Default: $MECHTESTS_DATASETS, else none.")
    p.add_argument("--paper-datasets", action="store_true",
                   help="run a -shape family on the paper's datasets (sizes of the paper; "
                        "needs --datasets) instead of the built-in ones. Default: built-in.")
    p.add_argument("--out", default="reports/bench", metavar="DIR",
                   help="where bench_<family>.json/.md go. Default: reports/bench.")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads. Default: torch's default.")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="X",
                   help="bf16 peak to compare with, in TFLOP/s. Default: the GPU's datasheet "
                        "value, else a measured bf16 matmul.")
    p.add_argument("--keep-scratch", action="store_true",
                   help="keep the scratch cache of activations and plots. Default: removed.")
    p.add_argument("--quiet", action="store_true",
                   help="no per-claim progress lines on stderr. Default: print them.")


def _examples(given: str | None, family: Family) -> int:
    """Examples per dataset for ``RunOptions``: ``--max-examples``, else the family's default;
    0 for every example."""
    from mechtests.families import parse_max_examples

    return family.examples(parse_max_examples(given)) or 0


def _family(args: argparse.Namespace) -> Family:
    from mechtests.errors import ConfigError
    from mechtests.families import load_families, select_family
    from mechtests.families.shape import LAYERS_ENV, parse_shape_layers, shape_family

    depth = parse_shape_layers(os.environ.get(LAYERS_ENV))
    families = load_families(Path(args.families_file) if args.families_file else None, depth)
    family = select_family(families, args.model_family)
    shape = family.extra.get("shape") if isinstance(family.extra, Mapping) else None
    if args.shape_layers is not None or args.paper_datasets:
        if not shape:
            raise ConfigError(
                f"--shape-layers and --paper-datasets apply to real-shape families; "
                f"{family.name!r} is not one. Fix: pick a <preset>-shape family (e.g. "
                "llama31-shape) or drop the option.")
        family = shape_family(families[shape["preset"]],
                              args.shape_layers or shape["n_layers"], args.paper_datasets)
    return family


def _cases(family: Family, areas: Sequence[str] | None) -> list[tuple[Claim, tuple[str, str]]]:
    from mechtests.claims.table import load_claims

    cases = [(c, pair) for c in load_claims() for pair in c.pairs
             if all(r in family.models for r in pair) and (not areas or c.area in areas)]
    # the order of `mechtests run` (plugin: family, area, test id), so model loads match a run
    return sorted(cases, key=lambda cp: (cp[0].area, cp[1], cp[0].id))


def _make_context(family: Family, options: RunOptions, checkpoints: Path,
                  recorder: PhaseRecorder) -> FamilyContext:
    from mechtests.families import resolve_checkpoint
    from mechtests.measures.context import FamilyContext

    class BenchContext(FamilyContext):
        """Checkpoints from the persistent cache; every activation source registered."""

        def checkpoint_dir(self, role: str) -> Path:
            if role not in bench_paths:
                bench_paths[role] = resolve_checkpoint(self.family.models[role].ref, checkpoints)
            return bench_paths[role]

        def activations(self, role: str, prompts: Sequence[str], sites: Sequence[str],
                        positions: Sequence[int] | None, tag: str,
                        batch_size: int = 32) -> dict[str, torch.Tensor]:
            out = super().activations(role, prompts, sites, positions, tag, batch_size)
            recorder.register_source(role, out.values())
            return out

    bench_paths: dict[str, Path] = {}
    return BenchContext(family, options)


def _machine(device: torch.device) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_bench_subparser`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from mechtests.bench.flops import reference_peak
    from mechtests.bench.phases import PhaseRecorder
    from mechtests.bench.table import bench_result, format_table
    from mechtests.checkpoints.cache_dir import default_cache_dir
    from mechtests.data.sources import DatasetsUnavailable
    from mechtests.measures.context import RunOptions
    from mechtests.measures.runner import run_measure

    if args.threads:
        torch.set_num_threads(args.threads)
    family = _family(args)
    shape = family.extra.get("shape") or {}
    dtype = args.dtype if args.dtype != "auto" else str(shape.get("dtype", "float32"))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    areas = [a.strip() for a in args.areas.split(",")] if args.areas else None
    checkpoints = Path(args.cache) if args.cache else default_cache_dir()
    scratch = Path(tempfile.mkdtemp(prefix="mechtests-bench-"))
    options = RunOptions(cache_dir=scratch / "cache", report_dir=scratch / "report",
                         device=str(device), dtype=dtype, backend=args.backend,
                         max_examples=_examples(args.max_examples, family),
                         datasets_dir=Path(args.datasets) if args.datasets else None,
                         progress=False)
    recorder = PhaseRecorder(device)
    ctx = _make_context(family, options, checkpoints, recorder)
    peak, peak_basis = reference_peak(device, args.peak_tflops)
    machine = _machine(device)
    start = time.perf_counter()
    for role in family.roles:  # build or resolve checkpoints before the clock starts
        ctx.checkpoint_dir(role)
    prepare = time.perf_counter() - start
    cases = _cases(family, areas)
    rows: list[dict[str, Any]] = []
    try:
        with recorder.instrument():
            recorder.start()
            start = time.perf_counter()
            for claim, pair in cases:
                t0 = time.perf_counter()
                status, message = "ok", ""
                try:
                    run_measure(ctx, claim, pair)
                except DatasetsUnavailable as exc:
                    status, message = "skipped", str(exc).splitlines()[0][:200]
                except Exception as exc:  # a failing claim is reported, the bench goes on
                    status, message = "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                rows.append({"claim": claim.id, "area": claim.area, "pair": list(pair),
                             "seconds": round(time.perf_counter() - t0, 3), "status": status,
                             "message": message})
                if not args.quiet:
                    print(f"[bench] {len(rows)}/{len(cases)} {claim.id} {'->'.join(pair)}: "
                          f"{status} {rows[-1]['seconds']:.1f}s", file=sys.stderr, flush=True)
            recorder.finish()
            total = time.perf_counter() - start
        ctx.release()
    finally:
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = bench_result(family, options, recorder, rows, total, prepare, peak, peak_basis,
                          machine, args, scratch if args.keep_scratch else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(result)
    (out / f"bench_{family.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"bench_{family.name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / f'bench_{family.name}.json'} and .md")
    return 0 if all(r["status"] != "error" for r in rows) else 1
