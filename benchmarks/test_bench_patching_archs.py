"""Knowledge patching on every architecture the suffix engine supports, against the paper's
per-site loop, at identical numbers. Run:

    pytest benchmarks/test_bench_patching_archs.py -n 0 -p no:xdist -s

Models: random weights at released checkpoints' widths (hidden size, heads, key/value heads,
head dim, MLP, vocabulary, sliding window, soft-caps, ``query_pre_attn_scalar``), cut to
:data:`LAYERS` blocks, fp32 on CPU, one thread: the ``mechtests/shapes.yaml`` presets of the
paper's families (Llama-3.1-8B, Mistral-7B-v0.3, Qwen1.5-0.5B with the Qwen2 architecture,
Gemma-2-9B) and Gemma-3-270M (:data:`GEMMA3_270M`, from its public config.json). Timing does
not depend on the weights. Prompts: the organism family's few-shot cities pairs (docs/claims.md
2.2) through the word-level tokenizer of the built-in data (about 60 tokens), every layer and
every position of the statement + question window; :data:`PAIRS` pairs per model (fewer at
7-9B widths, where one loop forward takes seconds; the whole file about 15 minutes on a busy
2-core machine, ``-k gemma`` for the Gemma models only). The loop runs once, the engine
best of :data:`ROUNDS`; they must agree to 1e-4 of the largest ``|LD|``; the speed-up is
printed and written to ``extra_info``.

What the ratio compares: per pair the loop runs ``L x W`` full forwards (``L`` layers, window
``W``), each unembedding the last position onto the whole vocabulary (0.1-0.9 GB of weights
read per forward at these vocabularies); the engine runs the FALSE prompts once (the last block
lean), then only the suffix tokens above each patched layer, and reads two unembedding rows.
Compute alone caps the ratio near ``4 W`` at 2 layers; deeper models give the engine more (the
8-layer organism:
``test_bench_patching.py``; the real 18-layer Gemma-3-270M: docs/performance.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.methods.patching import patch_loop, patch_suffix, true_activations

pytestmark = pytest.mark.benchmark
torch.set_num_threads(1)  # tests/conftest.py does not reach benchmarks/

LAYERS = 2
ROUNDS = 3
GOAL = 20.0  # >= 20x the per-site loop on CPU for every supported architecture
FLOOR = 8.0  # asserted: well below the goal, so a noisy shared machine does not flake
TOLERANCE = 1e-4  # of the largest |LD|
# Gemma-3-270M, public config.json of google/gemma-3-270m (layer_types: 5 sliding, 1 full)
GEMMA3_270M: dict[str, Any] = {
    "model_type": "gemma3_text", "num_hidden_layers": 18, "hidden_size": 640,
    "intermediate_size": 2048, "num_attention_heads": 4, "num_key_value_heads": 1,
    "head_dim": 256, "vocab_size": 262144, "max_position_embeddings": 32768,
    "query_pre_attn_scalar": 256, "sliding_window": 512, "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0, "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": None,
    "final_logit_softcapping": None, "tie_word_embeddings": True,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
}
PAIRS = {"llama31": 2, "mistral": 2, "gemma2-9b": 2, "qwen15-0.5b": 8, "gemma3-270m": 8}


def _config(name: str) -> dict[str, Any]:
    """The named architecture's config keywords, cut to :data:`LAYERS` blocks."""
    from mechtests.families.shape import load_shapes

    config = dict(GEMMA3_270M) if name == "gemma3-270m" else {
        k: v for k, v in load_shapes()[name].config.items()
        if k not in ("architectures", "torch_dtype")}
    config["num_hidden_layers"] = LAYERS
    if "layer_types" in config:
        config["layer_types"] = list(config["layer_types"])[:LAYERS]
    return config


def _random_backend(name: str) -> Any:
    import transformers

    from mechtests.engine.hf_backend import HooksBackend
    from mechtests.engine.tiny import build_tokenizer, build_vocab

    vocab = build_vocab()
    kwargs = _config(name)
    model_type = kwargs.pop("model_type")
    config = transformers.AutoConfig.for_model(
        model_type, **kwargs, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return HooksBackend(model, build_tokenizer(vocab), name=f"{name} widths, {LAYERS} layers")


@pytest.fixture(scope="module", params=list(PAIRS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Any:
    from mechtests.families import load_families
    from mechtests.measures.context import FamilyContext, RunOptions
    from mechtests.measures.knowledge.runs import _patching_set

    name = request.param
    tmp: Path = tmp_path_factory.mktemp("bench-patching-archs")
    family = load_families()["organism"]
    ctx = FamilyContext(family, RunOptions(cache_dir=tmp, report_dir=tmp,
                                           max_examples=PAIRS[name], progress=False))
    backend = _random_backend(name)
    pset = _patching_set(ctx, "cities", backend)
    readout = (backend.token_id(family.truth.readout_true),
               backend.token_id(family.truth.readout_false))
    source = true_activations(backend, list(pset.true_prompts), pset.width)
    args = (backend, list(pset.false_prompts), source, readout)
    start = time.perf_counter()
    reference = patch_loop(*args)
    loop = time.perf_counter() - start
    tokens = backend.tokenize(pset.false_prompts[:1]).input_ids.shape[1]
    yield {"name": name, "args": args, "reference": reference, "loop": loop,
           "shape": f"{len(pset)} pairs x {LAYERS} layers x {pset.width} positions, "
                    f"{tokens}-token prompts"}
    backend.release()


def test_bench_suffix_engine_against_the_loop_per_architecture(benchmark: Any,
                                                               case: dict[str, Any]) -> None:
    ld, _ = benchmark.pedantic(patch_suffix, args=case["args"], rounds=ROUNDS, iterations=1)
    reference = case["reference"]
    scale = float(reference.abs().max())
    err = float((ld - reference).abs().max())
    fast = float(benchmark.stats.stats.min)
    speedup = case["loop"] / fast
    summary = (f"{case['name']} widths, {case['shape']}: loop {case['loop']:.2f}s, suffix "
               f"engine {fast:.3f}s ({speedup:.1f}x; goal {GOAL:g}x), max |diff| {err:.2e} "
               f"at max |LD| {scale:.2f}")
    benchmark.extra_info.update(model=case["name"], shape=case["shape"], loop_s=case["loop"],
                                speedup=speedup, max_abs_diff=err, max_abs_ld=scale)
    print(summary)
    assert err <= TOLERANCE * scale, summary
    assert speedup >= FLOOR, summary
