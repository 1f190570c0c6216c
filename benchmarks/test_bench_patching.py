"""Knowledge patching: the engines against the paper's per-site loop, at identical numbers. Run:

    pytest benchmarks/test_bench_patching.py -n 0 -p no:xdist

Model: the shipped CI organism's base (``fixtures/organism/checkpoints/ci/base``), else a
random-weight model of the organism's shape (Llama, the ``ci`` size of organism/config.py,
word-level vocabulary of the built-in data; timing does not depend on the weights). Prompts:
the family's few-shot cities prompts (paper code Knowledge+Truthfulness/patching.py:load_data),
:data:`N_PAIRS` pairs, every layer and
every position of the statement + question window. fp32 on CPU, one thread. The engines must
agree with the loop to 2e-6 of the largest ``|LD|`` (float32 rounding through the 8 layers of
differently shaped matrix multiplies: the suffix engine differs by up to 1.4e-5 at ``|LD|``
about 13); the measured speed-up is written to ``extra_info``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.methods.patching import (
    patch_loop,
    patch_suffix,
    patch_sweep,
    true_activations,
)

pytestmark = pytest.mark.benchmark
torch.set_num_threads(1)  # tests/conftest.py does not reach benchmarks/

N_PAIRS = 32
SHIPPED = Path(__file__).resolve().parents[1] / "mechtests" / "fixtures" / "organism" / \
    "checkpoints" / "ci" / "base"
GOAL = 20.0  # >= 20x the per-site loop on CPU
FLOOR = 8.0  # asserted: well below the goal, so a noisy shared machine does not flake


def _organism_shaped(cache: Path) -> Any:
    import transformers

    from mechtests.engine.hf_backend import HooksBackend
    from mechtests.engine.tiny import build_tokenizer, build_vocab
    from mechtests.organism.config import size_config

    vocab = build_vocab()
    ci = size_config("ci")
    config = transformers.LlamaConfig(
        hidden_size=ci.hidden, num_hidden_layers=ci.layers, num_attention_heads=ci.heads,
        num_key_value_heads=ci.heads, intermediate_size=ci.ff, vocab_size=len(vocab),
        max_position_embeddings=ci.max_positions,
        tie_word_embeddings=False, initializer_range=0.1, pad_token_id=0, bos_token_id=2,
        eos_token_id=3,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return HooksBackend(model, build_tokenizer(vocab), name="organism-shaped random")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mechtests.engine import load_backend
    from mechtests.families import load_families
    from mechtests.measures.context import FamilyContext, RunOptions
    from mechtests.measures.knowledge.runs import _patching_set

    tmp = tmp_path_factory.mktemp("bench-patching")
    family = load_families()["organism"]
    ctx = FamilyContext(family, RunOptions(cache_dir=tmp, report_dir=tmp, max_examples=N_PAIRS,
                                           progress=False))
    if (SHIPPED / "config.json").is_file():  # never train an organism just to time patching
        backend, label = load_backend(SHIPPED, device="cpu"), "organism ci/base (shipped)"
    else:
        backend, label = _organism_shaped(tmp), "organism-shaped random llama"
    pset = _patching_set(ctx, "cities", backend)
    readout = (backend.token_id(family.truth.readout_true),
               backend.token_id(family.truth.readout_false))
    source = true_activations(backend, list(pset.true_prompts), pset.width)
    args = (backend, list(pset.false_prompts), source, readout)
    reference = patch_loop(*args)
    return {"args": args, "reference": reference, "label": label,
            "shape": f"{len(pset)} pairs x {backend.n_layers} layers x {pset.width} positions, "
                     f"{backend.tokenize(pset.false_prompts[:1]).input_ids.shape[1]}-token prompts"}


def _best_of(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_bench_patching_per_site_loop(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.extra_info.update(model=setup["label"], shape=setup["shape"])
    ld = benchmark.pedantic(patch_loop, args=setup["args"], rounds=1, iterations=1)
    torch.testing.assert_close(ld, setup["reference"], atol=0, rtol=0)


def _tolerance(setup: dict[str, Any]) -> float:
    return 2e-6 * max(1.0, float(setup["reference"].abs().max()))


def test_bench_patching_sweep(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.extra_info.update(model=setup["label"], shape=setup["shape"])
    ld = benchmark.pedantic(patch_sweep, args=setup["args"], rounds=3, iterations=1)
    torch.testing.assert_close(ld, setup["reference"], atol=_tolerance(setup), rtol=0)


def test_bench_patching_suffix_engine(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.extra_info.update(model=setup["label"], shape=setup["shape"])
    ld, _ = benchmark.pedantic(patch_suffix, args=setup["args"], rounds=5, iterations=1)
    torch.testing.assert_close(ld, setup["reference"], atol=_tolerance(setup), rtol=0)


def test_suffix_engine_speedup_over_the_per_site_loop(setup: dict[str, Any],
                                                     record_property: Any) -> None:
    args = setup["args"]
    loop = _best_of(lambda: patch_loop(*args), 1)
    sweep = _best_of(lambda: patch_sweep(*args), 3)
    fast = _best_of(lambda: patch_suffix(*args), 5)
    ld, _ = patch_suffix(*args)
    torch.testing.assert_close(ld, setup["reference"], atol=_tolerance(setup), rtol=0)
    speedup = loop / fast
    summary = (f"{setup['label']}, {setup['shape']}: loop {loop:.3f}s, sweep {sweep:.3f}s "
               f"({loop / sweep:.1f}x), suffix engine {fast:.3f}s ({speedup:.1f}x; goal {GOAL:g}x)")
    record_property("patching_speedup", summary)
    print(summary)
    assert speedup >= FLOOR, summary
