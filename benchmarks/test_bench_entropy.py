"""Timing and memory of the chunked LogitVar (docs/claims.md (claim 5)). Run alone:

    pytest benchmarks/test_bench_entropy.py -n 0 -p no:xdist

The shape is a scaled-down 8B final layer (d_model 1024, d_mlp 4096, vocab 32768, bf16 on CPU):
its full cosine matrix would take 512 MiB in fp32; the chunked computation must stay far below.
Measured for the real Llama-3.1-8B shape (d_model 4096, d_mlp 14336, vocab 128256): see
``docs/status-confidence.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.methods.entropy_neurons import neuron_stats_from

pytestmark = pytest.mark.benchmark

D_MODEL, D_MLP, VOCAB = 1024, 4096, 32768
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _weights() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    unembed = (0.02 * torch.randn(VOCAB, D_MODEL, generator=g)).to(torch.bfloat16)
    w_out = (0.02 * torch.randn(D_MODEL, D_MLP, generator=g)).to(torch.bfloat16)
    gain = (1.0 + 0.1 * torch.randn(D_MODEL, generator=g)).to(torch.bfloat16)
    return w_out, unembed, gain


def _mib(key: str) -> float:
    match = re.search(rf"{key}:\s+(\d+) kB", _STATUS.read_text())
    assert match is not None
    return int(match.group(1)) / 1024


def test_chunked_logit_var_peak_memory_stays_far_below_the_full_matrix() -> None:
    try:
        _CLEAR_REFS.write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
    except OSError:
        pytest.skip("needs a writable /proc/self/clear_refs to reset the peak RSS")
    w_out, unembed, gain = _weights()
    _CLEAR_REFS.write_text("5")
    before = _mib("VmRSS")
    neuron_stats_from(w_out, unembed, gain, chunk_size=1024)
    extra = _mib("VmHWM") - before
    full = D_MLP * VOCAB * 4 / 2**20  # the fp32 cosine matrix the paper's code builds
    # expected: fp32 W_out (16 MiB) + fp32 and fp64 d_mlp x chunk blocks (48 MiB)
    assert extra < full / 3, f"peak extra RSS {extra:.0f} MiB vs full matrix {full:.0f} MiB"


def test_bench_chunked_logit_var(benchmark: Any) -> None:
    w_out, unembed, gain = _weights()
    stats = benchmark.pedantic(neuron_stats_from, args=(w_out, unembed, gain), rounds=1,
                               iterations=1)
    assert stats.logit_var.shape == (D_MLP,)
