"""``mechtests bench``: exclusive phase timing, phase markers, FLOP counting and the command on
the tiny family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mechtests.bench import phases as bench_phases
from mechtests.bench.phases import PHASES, PhaseRecorder
from mechtests.methods.probes import MassMeanProbe, accuracy
from mechtests.phases import active_recorder, phase, recording


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class _FakeClock:
    """Stands in for the ``time`` module of :mod:`mechtests.bench.phases`: wall and CPU time
    move only when the test advances them, so phase accounting is checked exactly, without
    sleeping."""

    def __init__(self) -> None:
        self.wall, self.cpu = 1000.0, 50.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def advance(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def test_nested_phase_time_is_charged_to_the_inner_phase_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(bench_phases, "time", clock)
    rec = PhaseRecorder(torch.device("cpu"))
    clock.advance(7.0, 7.0)  # before start(): charged to nothing
    rec.start()
    with rec.phase("activation collection"):
        clock.advance(0.05, 0.04)
        with rec.phase("load"):
            clock.advance(0.1, 0.08)
        clock.advance(0.02, 0.01)
    clock.advance(0.3, 0.2)
    rec.finish()
    stats = rec.stats
    assert stats["load"].seconds == pytest.approx(0.1)
    # the load's 0.1 s is not in the collection's time
    assert stats["activation collection"].seconds == pytest.approx(0.07)
    assert stats["other"].seconds == pytest.approx(0.3)
    assert stats["load"].cpu_seconds == pytest.approx(0.08)
    assert stats["activation collection"].cpu_seconds == pytest.approx(0.05)
    assert (stats["activation collection"].calls, stats["load"].calls) == (1, 1)
    assert stats["load"].peak_bytes > 0
    assert rec.stats["activation collection"].peak_bytes >= rec.stats["load"].peak_bytes


def _probe_data() -> tuple[torch.Tensor, torch.Tensor]:
    acts = torch.tensor([[1.0, 0.0], [2.0, 0.1], [-1.0, 0.0], [-2.0, -0.1]])
    return acts, torch.tensor([1, 1, 0, 0])


def test_a_marked_function_outside_a_bench_run_records_nothing() -> None:
    rec = PhaseRecorder(torch.device("cpu"))
    acts, labels = _probe_data()
    probe = MassMeanProbe().fit(acts, labels)
    with phase("plots", items=3):
        assert accuracy(probe, acts, labels) == 1.0
    assert active_recorder() is None
    assert all(s.calls == 0 and s.items == 0 and s.seconds == 0 for s in rec.stats.values())


def test_marked_calls_inside_a_recording_are_timed_once_per_outermost_call() -> None:
    rec = PhaseRecorder(torch.device("cpu"))
    acts, labels = _probe_data()
    with recording(rec):
        rec.start()
        probe = MassMeanProbe().fit(acts, labels)  # one fit: one call, one item
        accuracy(probe, acts, labels)  # calls the marked `correct`: part of the same call
        with phase("plots", items=3), phase("plots", items=5):  # the inner block is the outer's
            pass
        rec.finish()
    assert active_recorder() is None
    assert (rec.stats["probes"].calls, rec.stats["probes"].items) == (2, 1)
    assert (rec.stats["plots"].calls, rec.stats["plots"].items) == (1, 3)


def test_flop_hooks_count_two_flops_per_weight_per_token_plus_attention(tmp_path: Path) -> None:
    from mechtests.bench.flops import install_flop_hooks
    from mechtests.engine import load_backend
    from mechtests.families import resolve_checkpoint

    backend = load_backend(resolve_checkpoint("tiny:llama/base", tmp_path), device="cpu")
    rec = PhaseRecorder(torch.device("cpu"))
    model = backend.model
    install_flop_hooks(model, backend.spec, rec.add_flops)
    batch = backend.tokenize(["the city of", "is in the capital of the"])
    b, q = batch.input_ids.shape
    backend.forward(batch)
    cfg = model.config
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters() if p.dim() >= 2)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attn = 4 * b * q * q * cfg.num_attention_heads * head_dim
    expected = cfg.num_hidden_layers * (2 * per_layer * b * q + attn) \
        + 2 * cfg.vocab_size * cfg.hidden_size * b * q
    stats = rec.stats["other"]
    assert stats.flops == expected
    assert (stats.layer_tokens, stats.head_rows) == (b * q, b * q)


def test_bench_command_times_the_phases_of_the_tiny_family(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from mechtests.cli import main

    out = tmp_path / "out"
    code = main(["bench", "--model-family", "tiny", "--areas", "confidence,truth",
                 "--max-examples", "8", "--cache", str(tmp_path / "cache"), "--out", str(out),
                 "--quiet", "--device", "cpu"])
    assert code == 0
    table = capsys.readouterr().out
    for name in PHASES:
        assert f"| {name} |" in table
    result = json.loads((out / "bench_tiny.json").read_text())
    phases = result["phases"]
    assert phases["load"]["items"] >= 1
    assert phases["activation collection"]["flops"] > 0
    assert phases["entropy neurons"]["items"] > 0  # neurons scored
    assert phases["steering"]["items"] > 0
    total = sum(p["seconds"] for p in phases.values())
    assert abs(total - result["total_seconds"]) < 0.05 * result["total_seconds"] + 0.05
    assert all(r["status"] == "ok" for r in result["claims"])
    assert not result["uninstrumented"]
