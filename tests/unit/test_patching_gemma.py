"""The suffix patching engine on Gemma-2 and Gemma-3 blocks equals the per-site loop.

Tiny random models with every Gemma feature switched on where it changes the numbers: prompts
longer than the sliding window, sliding and full layers mixed, attention and final logit
soft-caps small enough to bite, grouped-query attention, ``query_pre_attn_scalar`` apart from
``head_dim``, and (Gemma-3) q/k norms with separate local and global rotary bases. The
engine is compared with the paper's per-site loop to 1e-4 of the largest ``|LD|``; each
feature is then switched off inside the engine alone, which must break the agreement (so the
comparison sees it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.engine.suffix import blocks as suffix_blocks
from mechtests.engine.suffix import runs as suffix_runs
from mechtests.methods.patching import (
    patch_heatmaps,
    patch_loop,
    patch_suffix,
    patch_suffix_many,
    true_activations,
)

WORDS = ("the city of is in this statement : TRUE FALSE . paris rome oslo lima france italy "
         "norway peru").split()
SHOT = "the city of paris is in france . this statement is : TRUE\n"
TRUE = ["the city of rome is in italy .", "the city of oslo is in norway ."]
FALSE = ["the city of lima is in italy .", "the city of paris is in norway ."]
Q = " this statement is :"
WIDTH = 10
WINDOW = 6  # the prompts are 30 tokens: sliding layers see a fifth of them
TOLERANCE = 1e-4  # of the largest |LD|
TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")


def _gemma(arch: str, seed: int = 0, **overrides: Any) -> Any:
    import transformers

    from mechtests.engine.hf_backend import HooksBackend
    from mechtests.engine.tiny import SPECIALS, build_tokenizer

    vocab = [*SPECIALS, *sorted(set(WORDS))]
    kwargs: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, vocab_size=len(vocab), max_position_embeddings=128,
        initializer_range=0.3, tie_word_embeddings=False, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, query_pre_attn_scalar=12, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=4.0,
    )
    if arch == "gemma2":
        kwargs.update(attn_logit_softcapping=1.5)
        config_cls, model_cls = transformers.Gemma2Config, transformers.Gemma2ForCausalLM
    else:
        config_cls, model_cls = transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM
    config = config_cls(**{**kwargs, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # norm gains away from Gemma's zero init, so (1 + w) matters
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.5)
    model.requires_grad_(False)
    return HooksBackend(model, build_tokenizer(vocab), name=f"{arch}-{seed}")


def _prompts(statements: list[str]) -> list[str]:
    return [SHOT + s + Q for s in statements]


def _args(backend: Any) -> tuple[Any, ...]:
    readout = (backend.token_id(" TRUE"), backend.token_id(" FALSE"))
    source = true_activations(backend, _prompts(TRUE), WIDTH)
    return backend, _prompts(FALSE), source, readout


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max()) / float(want.abs().max())


@pytest.fixture(scope="module", params=["gemma2", "gemma3_text"])
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    backend = _gemma(request.param)
    args = _args(backend)
    return {"arch": request.param, "args": args, "loop": patch_loop(*args)}


def test_gemma_prompts_are_longer_than_the_sliding_window(case: dict[str, Any]) -> None:
    backend, false, _, _ = case["args"]
    assert backend.tokenize(false[:1]).input_ids.shape[1] > 4 * WINDOW
    assert backend.model.config.model_type == case["arch"]


def test_gemma_suffix_engine_equals_the_per_site_loop(case: dict[str, Any]) -> None:
    res = patch_heatmaps(*case["args"])
    assert res.engine == "suffix", res.note
    assert float(case["loop"].std()) > 0.05  # the map is not flat: the comparison means something
    assert _rel_err(res.ld, case["loop"]) <= TOLERANCE


def test_gemma_several_sources_and_small_token_budgets_equal_the_loop(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, false, own, readout = case["args"]
    other = true_activations(_gemma(case["arch"], seed=1), _prompts(TRUE), WIDTH)
    monkeypatch.setattr(suffix_runs, "TOKEN_BUDGET", {"cpu": 1, "cuda": 1})  # one pair a call
    lds, _ = patch_suffix_many(backend, false, [own, other], readout, max_rows=1)
    assert _rel_err(lds[0], case["loop"]) <= TOLERANCE
    assert _rel_err(lds[1], patch_loop(backend, false, other, readout)) <= TOLERANCE


FEATURES = {
    "sliding window": lambda d: dataclasses.replace(d, windows=(None,) * len(d.windows)),
    "final logit soft-cap": lambda d: dataclasses.replace(d, final_softcap=None),
    "sandwich norms": lambda d: dataclasses.replace(
        d, arch=dataclasses.replace(d.arch, sandwich_norms=False)),
}
GEMMA2_ONLY = {"attention soft-cap": lambda d: dataclasses.replace(d, attn_softcap=None)}
GEMMA3_ONLY = {
    "q/k norms": lambda d: dataclasses.replace(d, arch=dataclasses.replace(d.arch, qk_norm=False)),
    "local rotary base": lambda d: dataclasses.replace(
        d, layer_types=("full_attention",) * len(d.layer_types)),
}


def test_each_gemma_feature_changes_the_map_the_engine_must_follow(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    features = {**FEATURES, **(GEMMA2_ONLY if case["arch"] == "gemma2" else GEMMA3_ONLY)}
    real = suffix_blocks.decoder_of
    for name, drop in features.items():
        monkeypatch.setattr(suffix_blocks, "decoder_of", lambda m, drop=drop: drop(real(m)))
        ld, _ = patch_suffix(*case["args"])
        assert _rel_err(ld, case["loop"]) > 100 * TOLERANCE, f"{case['arch']}: {name}"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_tiny_checkpoint_patches_with_the_suffix_engine_at_the_loops_numbers(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from mechtests.engine import load_backend
    from mechtests.engine.tiny import build_vocab, resolve

    backend = load_backend(resolve(f"{arch}/base", _tiny_cache(tmp_path_factory)), device="cpu")
    words = [w for w in build_vocab() if w.isalpha() and w.islower()][:10]
    shot = " ".join(words[:6]) + " : TRUE\n"
    true = [shot + " ".join(words[i : i + 6]) + " :" for i in (1, 2)]
    false = [shot + " ".join([*words[i : i + 3], words[9], *words[i + 4 : i + 6]]) + " :"
             for i in (1, 2)]
    source = true_activations(backend, true, 6)
    args = (backend, false, source, (backend.token_id("TRUE"), backend.token_id("FALSE")))
    res, loop = patch_heatmaps(*args), patch_loop(*args)
    backend.release()
    assert res.engine == "suffix", res.note
    assert float(loop.std()) > 0.01
    assert _rel_err(res.ld, loop) <= TOLERANCE


def _tiny_cache(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "tiny-cache"
