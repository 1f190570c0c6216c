"""``mechtests bench``: the claim matrix of one family, timed per phase.

Runs every claim's measure function on every model pair of the family (the same cases as
``mechtests run``, grouped by area) inside a :class:`~mechtests.bench_phases.PhaseRecorder`,
and writes ``bench_<family>.json`` and ``bench_<family>.md`` to ``--out`` and prints the table:
per phase (load, activation collection, patching sweep, cross-model patching, direction
selection, probes, steering, generation, entropy neurons, other) the exclusive wall time, the
items processed and their rate, the peak memory, and for the model-bound phases the FLOP rate
and its share of the bf16 peak (:mod:`mechtests.bench_flops`).

Caches: checkpoints come from the usual cache (``--cache``, built once), but activations,
steering and generation results go to a fresh scratch directory, so every run measures the
work, never a cache hit. Verdicts are not computed (see ``mechtests run``).

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

    from mechtests.bench_phases import PhaseRecorder
    from mechtests.claims.model import Claim
    from mechtests.context import FamilyContext, RunOptions
    from mechtests.families import Family

__all__ = ["add_bench_subparser", "format_table", "run_bench"]

AREA_ORDER = ("truth", "knowledge", "crossmodel", "refusal", "confidence")
GOALS = {"gpu_minutes_8b": 20.0, "gpu_peak_over_weights": 1.15, "cpu_organism_minutes": 2.0}


def add_bench_subparser(sub: Any) -> None:
    """The ``bench`` sub-command's arguments."""
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
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="subsample every dataset to at most N examples. Default: all.")
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
    from mechtests.context import FamilyContext
    from mechtests.families import resolve_checkpoint

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

    from mechtests.areas import get_measure
    from mechtests.bench_flops import reference_peak
    from mechtests.bench_phases import PhaseRecorder
    from mechtests.checkpoints.cache_dir import default_cache_dir
    from mechtests.context import RunOptions
    from mechtests.data.sources import DatasetsUnavailable

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
                         max_examples=args.max_examples,
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
                    get_measure(claim.measure)(ctx, claim, pair)
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
    result = _result(family, options, recorder, rows, total, prepare, peak, peak_basis, machine,
                     args, scratch if args.keep_scratch else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(result)
    (out / f"bench_{family.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"bench_{family.name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / f'bench_{family.name}.json'} and .md")
    return 0 if all(r["status"] != "error" for r in rows) else 1


def _result(family: Family, options: RunOptions, recorder: PhaseRecorder,
            rows: list[dict[str, Any]], total: float, prepare: float, peak: float,
            peak_basis: str, machine: dict[str, Any], args: argparse.Namespace,
            scratch: Path | None) -> dict[str, Any]:
    from mechtests.bench_phases import UNITS

    phases = {}
    cuda = recorder.memory.cuda
    for name, s in recorder.stats.items():
        rate = s.flops / s.seconds if s.seconds > 0 else 0.0
        clock = s.seconds if cuda else s.cpu_seconds  # the peak's clock (bench_flops)
        per_clock = s.flops / clock if clock > 0 else 0.0
        phases[name] = {
            "seconds": round(s.seconds, 3), "cpu_seconds": round(s.cpu_seconds, 3),
            "share": round(s.seconds / total, 4) if total else 0,
            "calls": s.calls, "items": s.items, "unit": UNITS[name],
            "items_per_s": round(s.items / s.seconds, 3) if s.seconds > 0 and s.items else None,
            "peak_bytes": s.peak_bytes, "flops": s.flops, "flop_per_s": rate,
            "flop_per_clock_s": per_clock,
            "peak_share": per_clock / peak if s.flops and peak else None,
            "layer_tokens": s.layer_tokens, "head_rows": s.head_rows,
        }
    weights = max((m["weights_bytes"] for m in recorder.models.values()), default=0)
    overall = max((s.peak_bytes for s in recorder.stats.values()), default=0)
    areas: dict[str, float] = {}
    for r in rows:
        areas[r["area"]] = round(areas.get(r["area"], 0.0) + r["seconds"], 3)
    return {
        "family": family.name, "description": family.description,
        "random_weights": family.random_weights, "shape": family.extra.get("shape"),
        "options": {"device": options.device, "dtype": options.dtype, "backend": options.backend,
                    "max_examples": options.max_examples, "threads": args.threads,
                    "areas": args.areas},
        "machine": machine, "memory_kind": recorder.memory.kind,
        "bf16_peak_flop_per_s": peak, "bf16_peak_basis": peak_basis,
        "prepare_seconds": round(prepare, 3), "total_seconds": round(total, 3),
        "total_cpu_seconds": round(sum(s.cpu_seconds for s in recorder.stats.values()), 3),
        "phases": phases, "areas": areas, "claims": rows, "models": recorder.models,
        "peak_bytes": overall, "peak_over_weights": overall / weights if weights else None,
        "goals": GOALS, "uninstrumented": recorder.missing,
        "scratch": str(scratch) if scratch else None,
    }


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def format_table(result: dict[str, Any]) -> str:
    """The phase table (markdown) of a :func:`run_bench` result."""
    shape = result.get("shape")
    depth = f", {shape['n_layers']} of {shape['real_layers']} layers" if shape else ""
    opts, machine = result["options"], result["machine"]
    where = machine.get("device_name") or f"CPU x{machine.get('cpu_count')}"
    load = machine.get("loadavg")
    lines = [
        f"mechtests bench: {result['family']}"
        f"{' (random weights' + depth + ')' if result['random_weights'] else ''}, "
        f"{opts['device']} {opts['dtype']}, backend {opts['backend']}, "
        f"max examples {opts['max_examples'] or 'all'}",
        f"machine: {where}, torch threads {machine['torch_threads']}"
        + (f", load average {load[0]:.1f} at start" if load else "")
        + f"; memory: {result['memory_kind']}; bf16 peak "
        f"{result['bf16_peak_flop_per_s'] / 1e12:.3g} TFLOP/s ({result['bf16_peak_basis']})",
        "TFLOP/s and % bf16 peak: per " + ("second" if result["memory_kind"].startswith(
            "torch.cuda") else "CPU second (process CPU time: other load on the machine does not "
                               "count against them)"),
        "",
        "| phase | seconds | CPU s | share | calls | items | items/s | peak memory | TFLOP/s "
        "| % bf16 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in result["phases"].items():
        items = f"{p['items']:,} {p['unit']}" if p["items"] else "-"
        tflops = f"{p['flop_per_clock_s'] / 1e12:.3g}" if p["flops"] else "-"
        share = f"{100 * p['peak_share']:.1f}" if p["peak_share"] is not None else "-"
        lines.append(
            f"| {name} | {p['seconds']:.2f} | {p['cpu_seconds']:.2f} | {100 * p['share']:.1f}% "
            f"| {p['calls']} | {items} "
            f"| {_rate(p['items_per_s'])} | {_bytes(p['peak_bytes'])} | {tflops} | {share} |")
    ratio = result["peak_over_weights"]
    lines += [
        f"| **total** | **{result['total_seconds']:.2f}** | {result['total_cpu_seconds']:.2f} "
        f"| 100% | | | | {_bytes(result['peak_bytes'])} | | |",
        "",
        f"claims: {sum(r['status'] == 'ok' for r in result['claims'])} ok, "
        f"{sum(r['status'] == 'skipped' for r in result['claims'])} skipped, "
        f"{sum(r['status'] == 'error' for r in result['claims'])} errors; per area: "
        + ", ".join(f"{a} {s:.1f}s" for a, s in result["areas"].items())
        + f"; checkpoints ready in {result['prepare_seconds']:.1f}s (not in the total)",
    ]
    loads = ", ".join(f"{role} x{m['loads']}" for role, m in result["models"].items())
    lines.append(f"model loads: {loads}")
    if ratio and result["memory_kind"].startswith("torch.cuda"):
        lines.append(f"peak GPU memory / one model's weights: {ratio:.2f} "
                     f"(goal <= {GOALS['gpu_peak_over_weights']})")
    for r in result["claims"]:
        if r["status"] == "error":
            lines.append(f"error: {r['claim']} {'->'.join(r['pair'])}: {r['message']}")
    if result["uninstrumented"]:
        lines.append("not instrumented (missing): " + ", ".join(result["uninstrumented"]))
    return "\n".join(lines)
