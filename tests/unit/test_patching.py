"""Patching engines (paper code Knowledge+Truthfulness/patching.py:patching_one_model): the suffix
engine and the sweep equal the per-site loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.engine.suffix import blocks as suffix_blocks
from mechtests.engine.suffix import runs as suffix_runs
from mechtests.methods import patching
from mechtests.methods.patching import (
    clean_logit_diffs,
    patch_heatmaps,
    patch_loop,
    patch_suffix,
    patch_sweep,
    resid_sites,
    true_activations,
)

WORDS = ("the city of is in not this statement : TRUE FALSE . a b c d e f g h x y z "
         "paris rome oslo lima france italy norway peru").split()
SHOTS = "the city of paris is in france . this statement is : TRUE\n" \
        "the city of rome is in peru . this statement is : FALSE\n"
TRUE = ["the city of rome is in italy .", "the city of oslo is in norway .",
        "the city of lima is in peru ."]
FALSE = ["the city of lima is in italy .", "the city of paris is in norway .",
         "the city of oslo is in peru ."]
Q = " this statement is :"
WIDTH = 12


def _backend(arch: str = "llama", seed: int = 0, layers: int = 3, **overrides: Any) -> Any:
    import transformers

    from mechtests.engine.hf_backend import HooksBackend
    from mechtests.engine.tiny import SPECIALS, build_tokenizer

    vocab = [*SPECIALS, *sorted(set(WORDS))]
    kwargs: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=len(vocab), max_position_embeddings=128,
        initializer_range=0.3, tie_word_embeddings=False, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, head_dim=8,
    )
    config = getattr(transformers, {"llama": "LlamaConfig", "qwen2": "Qwen2Config",
                                    "qwen3": "Qwen3Config",
                                    "mistral": "MistralConfig"}[arch])(**kwargs, **overrides)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model_cls = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}[arch]
    model = getattr(transformers, model_cls)(config).eval()
    model.requires_grad_(False)
    return HooksBackend(model, build_tokenizer(vocab), name=f"{arch}-{seed}")


@pytest.fixture(scope="module")
def model() -> Any:
    return _backend()


def _prompts(statements: list[str]) -> list[str]:
    return [SHOTS + s + Q for s in statements]


def _readout(backend: Any) -> tuple[int, int]:
    return backend.token_id(" TRUE"), backend.token_id(" FALSE")


def test_true_activations_are_one_tensor_per_layer_at_the_window(model: Any) -> None:
    src = true_activations(model, _prompts(TRUE), WIDTH)
    assert len(src) == model.n_layers
    assert all(s.shape == (3, WIDTH, model.d_model) and s.dtype == torch.float32 for s in src)
    assert resid_sites(2) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_suffix_engine_and_sweep_equal_the_per_site_loop_in_fp32(model: Any) -> None:
    src = true_activations(model, _prompts(TRUE), WIDTH)
    args = (model, _prompts(FALSE), src, _readout(model))
    ref = patch_loop(*args)
    fast, ld_false = patch_suffix(*args, max_rows=2)
    sweep = patch_sweep(*args, max_rows=7)
    assert float(ref.std()) > 0.05  # the heatmap is not flat: the comparison means something
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(sweep, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ld_false, clean_logit_diffs(model, _prompts(FALSE), _readout(model)),
                               atol=1e-5, rtol=0)


def test_cross_model_patching_agrees_across_engines() -> None:
    source_model, target = _backend(seed=1), _backend(seed=2)
    src = true_activations(source_model, _prompts(TRUE), WIDTH)
    args = (target, _prompts(FALSE), src, _readout(target))
    torch.testing.assert_close(patch_heatmaps(*args).ld, patch_loop(*args), atol=1e-5, rtol=0)


def test_structural_cells_equal_the_clean_runs(model: Any) -> None:
    src = true_activations(model, _prompts(TRUE), WIDTH)
    res = patch_heatmaps(model, _prompts(FALSE), src, _readout(model))
    ld_true = clean_logit_diffs(model, _prompts(TRUE), _readout(model))
    assert res.engine == "suffix"
    assert res.note == ""
    # the last block's output at the last token is all the readout sees: LD_T exactly
    torch.testing.assert_close(res.ld[:, -1, -1], ld_true, atol=1e-5, rtol=0)
    # the last block elsewhere cannot reach the last token; "the city of" is the same in T and F
    torch.testing.assert_close(res.ld[:, -1, :-1], res.ld_false[:, None].expand(3, WIDTH - 1),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(res.ld[:, :, :3], res.ld_false[:, None, None].expand(3, 3, 3),
                               atol=1e-5, rtol=0)


def test_pairs_of_other_lengths_and_narrower_windows(model: Any) -> None:
    true = [*_prompts(TRUE[:2]), SHOTS + "the city of lima is not in peru ." + Q]
    false = [*_prompts(FALSE[:2]), SHOTS + "the city of oslo is not in peru ." + Q]
    widths = [WIDTH, 5, WIDTH]
    src = true_activations(model, true, WIDTH)
    res = patch_heatmaps(model, false, src, _readout(model), widths)
    ref = patch_loop(model, false, src, _readout(model), widths)
    assert torch.isnan(res.ld[1, :, : WIDTH - 5]).all()
    assert not torch.isnan(res.ld[1, :, -5:]).any()
    torch.testing.assert_close(res.ld, ref, atol=1e-5, rtol=0, equal_nan=True)


def test_architectures_the_engine_does_not_know_fall_back_to_the_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _backend("llama", layers=2)
    monkeypatch.delitem(suffix_blocks.ARCHS, "llama")
    src = true_activations(backend, _prompts(TRUE[:1]), WIDTH)
    args = (backend, _prompts(FALSE[:1]), src, _readout(backend))
    res = patch_heatmaps(*args)
    assert res.engine == "sweep"
    assert "(llama)" in res.note
    torch.testing.assert_close(res.ld, patch_loop(*args), atol=1e-5, rtol=0)
    with pytest.raises(patching.SuffixEngineUnavailable):
        patch_heatmaps(*args, engine="suffix")


class _ProtocolOnly:
    """The backend protocol's patching half and nothing else: no ``suffix_patcher()``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.n_layers, self.d_model = inner.name, inner.n_layers, inner.d_model
        self.device, self.dtype, self.tokenizer = inner.device, inner.dtype, inner.tokenizer

    def tokenize(self, prompts: Any, add_special_tokens: bool = True) -> Any:
        return self.inner.tokenize(prompts, add_special_tokens)

    def forward(self, batch: Any, hooks: Any = (), last_only: bool = False) -> torch.Tensor:
        return self.inner.forward(batch, hooks, last_only)  # type: ignore[no-any-return]


def test_a_backend_that_does_not_offer_the_suffix_engine_gets_the_sweep(model: Any) -> None:
    src = true_activations(model, _prompts(TRUE[:1]), WIDTH)
    args = (_ProtocolOnly(model), _prompts(FALSE[:1]), src, _readout(model))
    res = patch_heatmaps(*args)
    assert res.engine == "sweep"
    assert "_ProtocolOnly" in res.note
    torch.testing.assert_close(res.ld, patch_loop(model, *args[1:]), atol=1e-5, rtol=0)
    with pytest.raises(patching.SuffixEngineUnavailable, match="suffix_patcher"):
        patch_heatmaps(*args, engine="suffix")


def test_the_transformer_lens_bridge_offers_the_suffix_engine_too(tmp_path: Path) -> None:
    from mechtests.engine import load_backend
    from mechtests.engine.tiny import build_vocab, resolve

    bridge = load_backend(resolve("llama/base", tmp_path), device="cpu",
                          backend="transformer-lens")
    words = [w for w in build_vocab() if w.isalpha() and w.islower()][:10]
    true = [" ".join(words[:6]), " ".join(words[1:7])]
    false = [" ".join(words[2:8]), " ".join(words[3:9])]
    src = true_activations(bridge, true, 4)
    args = (bridge, false, src, (bridge.token_id(" " + words[0]), bridge.token_id(" " + words[1])))
    res = patch_heatmaps(*args)
    assert res.engine == "suffix", res.note
    torch.testing.assert_close(res.ld, patch_loop(*args), atol=1e-5, rtol=0)


def test_a_suffix_engine_that_disagrees_with_the_sweep_is_not_used(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = true_activations(model, _prompts(TRUE), WIDTH)
    real = model.suffix_patcher()

    class Broken:
        def patch(self, *args: Any, **kwargs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
            lds, ld_false = real.patch(*args, **kwargs)
            return [ld + 0.5 for ld in lds], ld_false

    monkeypatch.setattr(model, "suffix_patcher", Broken)
    res = patch_heatmaps(model, _prompts(FALSE), src, _readout(model))
    assert res.engine == "sweep"
    assert "disagrees" in res.note
    torch.testing.assert_close(res.ld, patch_loop(model, _prompts(FALSE), src, _readout(model)),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral"])
def test_qwen_and_mistral_use_the_suffix_engine(arch: str) -> None:
    backend = _backend(arch, layers=2)
    src = true_activations(backend, _prompts(TRUE[:2]), WIDTH)
    args = (backend, _prompts(FALSE[:2]), src, _readout(backend))
    res = patch_heatmaps(*args)
    assert res.engine == "suffix"
    torch.testing.assert_close(res.ld, patch_loop(*args), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "window"), [
    ("mistral", {"sliding_window": 5}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
])
def test_sliding_windows_shorter_than_the_prompt_are_followed(arch: str,
                                                              window: dict[str, Any]) -> None:
    backend = _backend(arch, layers=3, **window)
    src = true_activations(backend, _prompts(TRUE[:2]), WIDTH)
    args = (backend, _prompts(FALSE[:2]), src, _readout(backend))
    full = _backend(arch, layers=3)  # same weights, full attention: a different map
    ref = patch_loop(*args)
    assert float((patch_loop(full, *args[1:]) - ref).abs().max()) > 0.05
    fast, _ = patch_suffix(*args)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_bad_arguments_are_rejected(model: Any) -> None:
    src = true_activations(model, _prompts(TRUE), WIDTH)
    with pytest.raises(ValueError, match="engine"):
        patch_heatmaps(model, _prompts(FALSE), src, _readout(model), engine="fast")
    with pytest.raises(ValueError, match="widths"):
        patch_sweep(model, _prompts(FALSE), src, _readout(model), widths=[WIDTH + 1] * 3)
    with pytest.raises(ValueError, match="prompts"):
        patch_sweep(model, _prompts(FALSE[:2]), src, _readout(model))
    with pytest.raises(ValueError, match="layers"):
        patch_sweep(model, _prompts(FALSE), src[:2], _readout(model))


def test_several_sources_in_one_pass_equal_the_loop_of_each(model: Any) -> None:
    other = _backend(seed=3)
    own = true_activations(model, _prompts(TRUE), WIDTH)
    foreign = true_activations(other, _prompts(TRUE), WIDTH)
    results = patching.patch_heatmaps_many(model, _prompts(FALSE), [own, foreign],
                                           _readout(model))
    assert [r.engine for r in results] == ["suffix", "suffix"]
    for result, src in zip(results, (own, foreign)):
        ref = patch_loop(model, _prompts(FALSE), src, _readout(model))
        torch.testing.assert_close(result.ld, ref, atol=1e-5, rtol=0)
    assert float((results[0].ld - results[1].ld).abs().max()) > 0.05  # not the same map twice


def test_pair_slices_of_a_small_token_budget_give_the_same_maps(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    true = [*_prompts(TRUE[:2]), SHOTS + "the city of lima is not in peru ." + Q]
    false = [*_prompts(FALSE[:2]), SHOTS + "the city of oslo is not in peru ." + Q]
    widths = [WIDTH, 5, WIDTH]
    src = true_activations(model, true, WIDTH)
    ref = patch_loop(model, false, src, _readout(model), widths)
    monkeypatch.setattr(suffix_runs, "TOKEN_BUDGET", {"cpu": 1, "cuda": 1})  # one pair a call
    ld, _ = patch_suffix(model, false, src, _readout(model), widths, max_rows=2)
    torch.testing.assert_close(ld, ref, atol=1e-5, rtol=0, equal_nan=True)


def test_sources_of_different_windows_are_rejected(model: Any) -> None:
    wide = true_activations(model, _prompts(TRUE), WIDTH)
    narrow = true_activations(model, _prompts(TRUE), WIDTH - 2)
    with pytest.raises(ValueError, match="window width"):
        patching.patch_heatmaps_many(model, _prompts(FALSE), [wide, narrow], _readout(model))
