"""Benchmark: batched greedy generation with refusal hooks vs one prompt at a time.

Run with ``pytest benchmarks/test_bench_generation.py -p no:xdist`` (not part of the test run).
CPU: the organism's CI base checkpoint when it resolves, else the tiny random llama; 64 refusal
test prompts, 16 new tokens, the paper's all-layer directional ablation active. The two ways
must give the same text token for token (float32). GPU (skipped without CUDA): a random-weight
model of Llama-3.1-8B's shape (bf16, vocab 128,256 with a synthetic word-level tokenizer); there
bf16 numerics make padded and unpadded runs differ slightly, so agreement is recorded, not
asserted. Each test puts ``prompts_per_s`` in ``extra_info``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.engine.backend import Backend
from mechtests.methods.interventions import ablation_hooks
from mechtests.methods.stats import random_unit_directions

N_PROMPTS, NEW_TOKENS, BATCH = 64, 16, 32


def _cpu_backend(cache: Path) -> tuple[Backend, str]:
    from mechtests.engine import load_backend
    from mechtests.families import resolve_checkpoint

    try:
        path, label = resolve_checkpoint("organism:ci/base", cache), "organism ci/base"
    except Exception:
        path, label = resolve_checkpoint("tiny:llama/base", cache), "tiny llama/base"
    return load_backend(path, device="cpu", name=label), label


def _prompts() -> list[str]:
    from mechtests.data.refusal import format_prompts, load_refusal_splits
    from mechtests.data.sources import dataset_source

    try:
        splits = load_refusal_splits(dataset_source("builtin:organism", None))
        items = list(splits.harmful_test + splits.harmless_test)
    except Exception:
        items = ["this statement is TRUE", "FALSE : is this"] * N_PROMPTS
    return format_prompts("<user> {instruction} <assistant>", items[:N_PROMPTS])


@pytest.fixture(scope="module")
def cpu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    backend, label = _cpu_backend(Path(tmp_path_factory.mktemp("bench")))
    direction = random_unit_directions(1, backend.d_model, seed=0)[0].float()
    return {"backend": backend, "label": label, "prompts": _prompts(),
            "hooks": ablation_hooks(direction, backend.n_layers), "out": {}}


def _one_at_a_time(backend: Backend, prompts: list[str], hooks: list[Any]) -> list[str]:
    return [backend.generate([p], max_new_tokens=NEW_TOKENS, hooks=hooks, batch_size=1)[0]
            for p in prompts]


def test_bench_generation_batched_cpu(benchmark: Any, cpu: dict[str, Any]) -> None:
    b, prompts, hooks = cpu["backend"], cpu["prompts"], cpu["hooks"]
    out = benchmark.pedantic(lambda: b.generate(prompts, NEW_TOKENS, hooks, BATCH),
                             rounds=3, iterations=1)
    cpu["out"]["batched"] = out
    benchmark.extra_info.update(model=cpu["label"], batch_size=BATCH, n_prompts=len(prompts),
                                prompts_per_s=len(prompts) / benchmark.stats.stats.mean)


def test_bench_generation_one_at_a_time_cpu(benchmark: Any, cpu: dict[str, Any]) -> None:
    b, prompts, hooks = cpu["backend"], cpu["prompts"], cpu["hooks"]
    out = benchmark.pedantic(lambda: _one_at_a_time(b, prompts, hooks), rounds=1, iterations=1)
    batched = cpu["out"].get("batched") or b.generate(prompts, NEW_TOKENS, hooks, BATCH)
    benchmark.extra_info.update(model=cpu["label"], batch_size=1, n_prompts=len(prompts),
                                prompts_per_s=len(prompts) / benchmark.stats.stats.mean)
    assert out == batched


def _gpu_backend() -> Backend:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mechtests.engine.hf_backend import HooksBackend

    vocab_size = 128_256
    specials = ["<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>"]
    vocab = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(vocab_size - 6)])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<bos>", eos_token="<eos>", padding_side="left")
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=vocab_size,
                         max_position_embeddings=2048, rope_theta=500000.0,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         attn_implementation="eager")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.requires_grad_(False)
    return HooksBackend(model, tok, name="random Llama-3.1-8B shape")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_bench_generation_gpu_8b_shape(benchmark: Any) -> None:
    b = _gpu_backend()
    words = [f"w{i}" for i in range(1000)]
    prompts = [f"<user> {' '.join(words[(7 * k + j) % 1000] for j in range(8 + k % 24))} "
               "<assistant>" for k in range(N_PROMPTS)]
    hooks = ablation_hooks(random_unit_directions(1, b.d_model, seed=0)[0].float(), b.n_layers)
    out = benchmark.pedantic(lambda: b.generate(prompts, NEW_TOKENS, hooks, BATCH),
                             rounds=3, iterations=1, warmup_rounds=1)
    batched_s = benchmark.stats.stats.mean
    import time

    start = time.perf_counter()
    single = _one_at_a_time(b, prompts[:16], hooks)
    single_s = (time.perf_counter() - start) / 16 * len(prompts)
    agree = sum(a == s for a, s in zip(out[:16], single)) / 16
    benchmark.extra_info.update(model="random Llama-3.1-8B shape, bf16", batch_size=BATCH,
                                prompts_per_s=len(prompts) / batched_s,
                                one_at_a_time_prompts_per_s=len(prompts) / single_s,
                                agreement_first16=agree)
