"""Helpers of the report tests: synthetic claim records (no models), a matrix written from
them, and headless chromium."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mechtests.measures.runner import ClaimRecord
from mechtests.report.matrix import write_matrix

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def tiny_png(path: Path, width: int = 8, height: int = 4) -> Path:
    """A valid RGB PNG (a red-to-blue gradient), written without matplotlib."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((255 * x // width, 64, 255 - 255 * x // width))
                           for x in range(width))
        for _ in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _record(claim_id: str, family: str, pair: tuple[str, str], verdict: str,
            metric: float | None, control: float | None, **extra: Any) -> dict[str, Any]:
    area = claim_id.split(".")[0]
    rec = ClaimRecord(
        claim_id=claim_id, area=area, family=family, pair=list(pair),
        statement=f"Synthetic statement of {claim_id} <b>escaped</b> & kept.",
        paper=f"Du et al. 2025, docs/claims.md {area}",
        metric_name=f"{claim_id.split('.')[-1]} metric",
        verdict=verdict, message=extra.pop("message", f"{verdict.lower()} because of numbers"),
        metric=metric, control=control, control_label="control base",
        op=extra.pop("op", ">="), threshold=extra.pop("threshold", 0.5),
        control_margin=extra.pop("control_margin", 0.2), source="docs/claims.md: synthetic source",
        note="synthetic note", checkpoints={pair[0]: "aaaa1111", pair[1]: "bbbb2222"},
        **extra,
    )
    return rec.to_json()


def synthetic_records() -> list[dict[str, Any]]:
    """Three areas, two families, three columns, every verdict kind, one plot."""
    r = _record
    return [
        r("truth.direction.cosine", "organism", ("base", "instruct"), "PASS", 0.93, 0.12,
          interval=[0.9, 0.96], n=128, artifacts=["plots/truth_cosine.png"]),
        r("truth.direction.cosine", "organism", ("base", "sft"), "PASS", 0.95, 0.11,
          interval=[0.91, 0.97], n=128),
        r("truth.direction.cosine", "llama31", ("base", "instruct"), "SKIP", None, None,
          message="datasets unavailable: pass --mechtests-datasets"),
        r("truth.probe.transfer", "organism", ("base", "instruct"), "FAIL", 0.41, 0.35,
          interval=[0.38, 0.44], n=64),
        r("refusal.direction.low_cosine", "organism", ("base", "instruct"), "XFAIL", 0.77, 0.95,
          op="<=", threshold=0.5, control_margin=0.3, expected_failure="published cosine 0.77"),
        r("refusal.direction.low_cosine", "organism", ("base", "sft"), "XPASS", 0.21, 0.9,
          op="<=", threshold=0.5, control_margin=0.3, expected_failure="published cosine 0.77"),
        r("confidence.entropy_neurons.overlap", "organism", ("base", "instruct"), "ERROR", None,
          None, message="RuntimeError: out of memory"),
        r("confidence.entropy_neurons.overlap", "llama31", ("base", "instruct"), "PASS", 8.0,
          0.5, threshold=8, control_margin=5),
        *inconclusive_records(),
    ]


def inconclusive_records() -> list[dict[str, Any]]:
    """One INCONCLUSIVE cell per cause: a failed precondition, an interval spanning 0.95."""
    own = {"quantity": "own_ie", "measured": -0.019, "op": ">=", "value": 0.1, "holds": False,
           "why": "own-vector steering works", "source": "ours: synthetic"}
    return [
        _record("truth.steering.forward_ratio", "organism", ("base", "instruct"), "INCONCLUSIVE",
                -0.1, 0.01, threshold=0.9, control_margin=0.5, interval=[-0.15, -0.07],
                message="precondition failed: own-vector steering works: own_ie -0.019 < 0.1",
                preconditions=[own]),
        _record("knowledge.heatmap.correlation", "organism", ("base", "instruct"),
                "INCONCLUSIVE", 0.948, 0.444, threshold=0.95, control_margin=0.05,
                interval=[0.743, 0.957],
                message="interval [0.743, 0.957] contains the threshold 0.95: half-width 0.107 "
                        "> distance 0.0024; beats control base (0.444) by 0.504 >= 0.05",
                power={"half_width": 0.107, "distance": 0.0024, "decided": False}),
    ]


def write_synthetic_matrix(report_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """claim_matrix.{json,md,html} for ``records`` with stand-in thresholds and families."""
    tiny_png(report_dir / "plots" / "truth_cosine.png")
    thresholds = SimpleNamespace(path=Path("thresholds.yaml"), sha256="0" * 64)
    spec = SimpleNamespace(ref="fixtures/organism/checkpoints/ci/base")
    families = {"organism": SimpleNamespace(models={"base": spec, "instruct": spec}),
                "llama31": SimpleNamespace(models={"base": spec})}
    return write_matrix(records, report_dir, thresholds, families,
                        options={"max_examples": None, "dtype": "float32"})


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(chromium: str, profile: Path, *args: str, timeout: float = 120) -> str:
    """Run headless chromium with a throwaway profile and no network chatter; its stdout."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--disable-quic", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
