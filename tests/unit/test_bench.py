"""``mechtests bench``: exclusive phase timing, FLOP counting and the command on the tiny family."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mechtests.bench_phases import PHASES, PhaseRecorder


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_nested_phase_time_is_charged_to_the_inner_phase_only() -> None:
    rec = PhaseRecorder(torch.device("cpu"))
    rec.start()
    with rec.phase("activation collection"):
        time.sleep(0.05)
        with rec.phase("load"):
            time.sleep(0.1)
    rec.finish()
    outer, inner = rec.stats["activation collection"].seconds, rec.stats["load"].seconds
    assert 0.09 <= inner < 0.3
    assert 0.04 <= outer < 0.09  # the load's 0.1 s is not in the collection's time
    assert rec.stats["load"].peak_bytes > 0
    assert rec.stats["activation collection"].peak_bytes >= rec.stats["load"].peak_bytes


def test_flop_hooks_count_two_flops_per_weight_per_token_plus_attention(tmp_path: Path) -> None:
    from mechtests.bench_flops import install_flop_hooks
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
    for phase in PHASES:
        assert f"| {phase} |" in table
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
