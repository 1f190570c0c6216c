"""``-n auto``: how many workers, which GPU each gets, and one worker per family.

GPUs are faked with ``CUDA_VISIBLE_DEVICES`` (read before anything else, so no GPU and no
torch are needed); the worker processes are real xdist workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mechtests.plugin import xdist as xs

ENV_PROBE = '''
import json, os, pytest

@pytest.mark.parametrize("i", range({n}))
def test_probe(i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    out = os.path.join(os.environ["PROBE_DIR"], "%s-%d.json" % (worker, i))
    with open(out, "w") as f:
        json.dump({{"worker": os.environ["PYTEST_XDIST_WORKER"],
                   "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "omp": os.environ.get("OMP_NUM_THREADS")}}, f)
'''


def probes(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def run_auto(pytester: pytest.Pytester, cuda: str | None, *extra: str,
             tests: int = 6) -> tuple[pytest.RunResult, list[dict[str, Any]]]:
    pytester.makepyfile(test_probe=ENV_PROBE.format(n=tests))
    out = pytester.mkdir("probes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_DIR", str(out))
        mp.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
        mp.delenv("OMP_NUM_THREADS", raising=False)
        if cuda is None:
            mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            mp.setenv("CUDA_VISIBLE_DEVICES", cuda)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "auto", *extra)
    return result, probes(out)


def test_n_auto_starts_one_worker_per_faked_gpu_and_pins_each(pytester: pytest.Pytester) -> None:
    result, seen = run_auto(pytester, "0,1,2", tests=9)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*-n auto: 3 worker(s) (3 GPU(s) visible, 1 per worker)*"])
    pinned = {p["worker"]: p["cuda"] for p in seen}
    assert pinned == {"gw0": "0", "gw1": "1", "gw2": "2"}


def test_gpus_per_worker_gives_each_worker_a_block_of_gpus(pytester: pytest.Pytester) -> None:
    result, seen = run_auto(pytester, "4,5,6,7", "--gpus-per-worker", "2")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    assert {p["worker"]: p["cuda"] for p in seen} == {"gw0": "4,5", "gw1": "6,7"}


def test_n_auto_on_cpu_uses_half_the_cores_and_splits_threads(pytester: pytest.Pytester) -> None:
    cores = xs.cpu_cores()
    workers = max(1, cores // 2)
    result, seen = run_auto(pytester, "")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines([f"*-n auto: {workers} worker(s) (no GPU, {cores} CPU core(s)*"])
    assert {p["worker"] for p in seen} == {f"gw{i}" for i in range(workers)}
    assert {p["omp"] for p in seen} == {str(max(1, cores // workers))}
    assert {p["cuda"] for p in seen} == {""}


@pytest.mark.parametrize(
    ("gpus", "cores", "per", "expected"),
    [(0, 1, 1, 1), (0, 2, 1, 1), (0, 16, 1, 8), (0, 15, 1, 7), (1, 16, 1, 1), (4, 2, 1, 4),
     (8, 64, 2, 4), (3, 8, 2, 1), (1, 8, 2, 1)],
)
def test_the_auto_worker_count_rule(gpus: int, cores: int, per: int, expected: int) -> None:
    assert xs.choose_workers(gpus, cores, per) == expected


def _config(device: str = "auto", per: int = 1) -> Any:
    options = {"--mechtests-device": device, "--gpus-per-worker": per}
    config = SimpleNamespace(getoption=lambda name, default=None: options.get(name, default),
                             stash={})
    return config


def test_auto_num_workers_with_faked_cores_and_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(xs, "cpu_cores", lambda: 16)
    assert xs.auto_num_workers(_config()) == 8
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert xs.auto_num_workers(_config()) == 2
    assert xs.auto_num_workers(_config(device="cpu")) == 8  # --mechtests-device cpu: no GPUs
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")  # xdist's own override wins
    assert xs.auto_num_workers(_config()) == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", []), ("-1", []), ("0", ["0"]), ("0,1", ["0", "1"]), ("2, 3", ["2", "3"]),
     ("0,-1,2", ["0"]), ("GPU-aa,GPU-bb", ["GPU-aa", "GPU-bb"])],
)
def test_cuda_visible_devices_is_read_like_cuda_does(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert xs.visible_gpus() == expected


def test_nvidia_smi_is_asked_when_cuda_visible_devices_is_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                    "echo '  MIG 1g.10gb Device 0: (UUID: MIG-x)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert xs.visible_gpus() == ["0", "1"]


def test_gpu_discovery_does_not_import_torch_when_there_is_no_gpu(tmp_path: Path) -> None:
    code = ("import sys; from mechtests.plugin.xdist import visible_gpus; g = visible_gpus(); "
            "print(len(g), 'torch' in sys.modules)")
    for env in ({"CUDA_VISIBLE_DEVICES": ""}, {"PATH": str(tmp_path)}):  # no nvidia-smi on PATH
        full = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        full.update(env)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=full, check=False)
        if env.get("PATH") and any(Path("/dev").glob("nvidia[0-9]*")):
            continue  # a real NVIDIA box without nvidia-smi: torch is the documented fallback
        assert out.stdout.split() == ["0", "False"], out.stderr[-2000:]


def test_devices_for_worker_wraps_when_workers_outnumber_gpus() -> None:
    gpus = ["0", "1", "2", "3"]
    assert [xs.devices_for_worker(i, gpus) for i in range(5)] == [["0"], ["1"], ["2"], ["3"],
                                                                  ["0"]]
    assert xs.devices_for_worker(1, gpus, 2) == ["2", "3"]
    assert xs.devices_for_worker(0, [], 1) == []


def test_the_family_scope_tells_hyphenated_families_apart() -> None:
    pattern = xs.family_pattern(["llama2-7b", "llama2-13b", "qwen15-0.5b", "tiny"],
                                ["base", "sft", "instruct"])
    node = "mechtests/suite/test_claims.py::test_claim_holds[{}]"
    assert xs.scope_of(node.format("llama2-13b-base_instruct-truth.a.b"), pattern) == \
        "family:llama2-13b"
    assert xs.scope_of(node.format("qwen15-0.5b-base_sft-refusal.x"), pattern) == \
        "family:qwen15-0.5b"
    assert xs.scope_of(node.format("unknown-base_sft-x"), pattern) == \
        node.format("unknown-base_sft-x")
    assert xs.scope_of("tests/unit/test_stats.py::test_x", pattern) == \
        "tests/unit/test_stats.py::test_x"


FAMILY_PROBE = '''
import json, os, pytest

IDS = [f"{{fam}}-base_{{post}}-area.claim{{k}}" for fam in ("organism", "tiny")
       for post in ("sft", "instruct") for k in range(3)]

@pytest.mark.parametrize("case", IDS, ids=IDS)
def test_claimlike(case):
    out = os.path.join(os.environ["PROBE_DIR"], case + ".json")
    with open(out, "w") as f:
        json.dump({{"case": case, "worker": os.environ["PYTEST_XDIST_WORKER"]}}, f)
'''


def test_one_worker_runs_all_claim_tests_of_a_family(pytester: pytest.Pytester) -> None:
    """The loadgroup replacement: grouping by family survives pytest 9.2 (xdist #1386)."""
    pytester.makepyfile(test_family=FAMILY_PROBE.format())
    out = pytester.mkdir("probes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_DIR", str(out))
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-n", "2", "--model-family", "organism",
            "--model-family", "tiny",
        )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*xdist distribution by family*"])
    seen = probes(out)
    assert len(seen) == 12
    workers = {fam: {p["worker"] for p in seen if p["case"].startswith(fam + "-")}
               for fam in ("organism", "tiny")}
    assert all(len(w) == 1 for w in workers.values()), workers
    assert workers["organism"] != workers["tiny"]
