"""The result of ``mechtests bench`` (JSON-able) and its phase table (Markdown)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechtests.bench.phases import UNITS

if TYPE_CHECKING:
    from mechtests.bench.phases import PhaseRecorder
    from mechtests.families import Family
    from mechtests.measures.context import RunOptions

__all__ = ["GOALS", "bench_result", "format_table"]

GOALS = {"gpu_minutes_8b": 20.0, "gpu_peak_over_weights": 1.15, "cpu_organism_minutes": 2.0}


def bench_result(family: Family, options: RunOptions, recorder: PhaseRecorder,
            rows: list[dict[str, Any]], total: float, prepare: float, peak: float,
            peak_basis: str, machine: dict[str, Any], args: argparse.Namespace,
            scratch: Path | None) -> dict[str, Any]:
    phases = {}
    cuda = recorder.memory.cuda
    for name, s in recorder.stats.items():
        rate = s.flops / s.seconds if s.seconds > 0 else 0.0
        clock = s.seconds if cuda else s.cpu_seconds  # the peak's clock (bench.flops)
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
