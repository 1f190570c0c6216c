"""Entropy-neuron selection (paper code Confidence/IoU.py): LogitVar, folding, chunking,
selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mechtests.methods.entropy_neurons import (
    NeuronStats,
    expected_chance_overlap,
    logit_var,
    neuron_stats_from,
    overlap,
    random_pool_draw,
    random_pool_overlaps,
    select_entropy_neurons,
)


def _weights(d: int = 24, d_mlp: int = 40, vocab: int = 97, seed: int = 0) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]:
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(d, d_mlp, generator=g)
    # a shared offset on every unembedding row: the part that centring removes
    unembed = torch.randn(vocab, d, generator=g) + 0.7 * torch.randn(d, generator=g)
    gain = 1.0 + 0.5 * torch.randn(d, generator=g)
    return w_out, unembed, gain


def _reference(w_out: torch.Tensor, w_u: torch.Tensor) -> torch.Tensor:
    """The paper's full-matrix line (``Confidence/IoU.py``) in float64 on TL-style W_U [d, V]."""
    w = w_out.t().double()
    u = w_u.double()
    return ((w / w.norm(dim=1, keepdim=True)) @ (u / u.norm(dim=0))).var(dim=1)


def _tl_style_unembed(unembed: torch.Tensor, gain: torch.Tensor, layernorm: bool) -> torch.Tensor:
    """TransformerLens processing written out in full: fold the gain, (centre over d_model for
    LayerNorm), centre over the vocabulary. Returns [d_model, vocab]."""
    w_u = gain.double()[:, None] * unembed.double().t()
    if layernorm:
        w_u = w_u - w_u.mean(dim=0, keepdim=True)
    return w_u - w_u.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.float64])
def test_folded_logit_var_equals_full_matrix_reference(compute_dtype: torch.dtype) -> None:
    w_out, unembed, gain = _weights()
    ours = logit_var(w_out, unembed, gain, compute_dtype=compute_dtype, chunk_size=10)
    ref = _reference(w_out, _tl_style_unembed(unembed, gain, layernorm=False))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0.0)


def test_layernorm_folding_also_centres_over_d_model_and_writing_weights() -> None:
    w_out, unembed, gain = _weights(seed=1)
    ours = logit_var(w_out, unembed, gain, norm_kind="layernorm", chunk_size=13)
    centred_out = w_out - w_out.mean(dim=0, keepdim=True)
    ref = _reference(centred_out, _tl_style_unembed(unembed, gain, layernorm=True))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0.0)


def test_unfolded_variant_uses_the_raw_unembedding() -> None:
    w_out, unembed, gain = _weights(seed=2)
    raw = neuron_stats_from(w_out, unembed, gain, fold=False)
    folded = neuron_stats_from(w_out, unembed, gain, fold=True)
    torch.testing.assert_close(raw.logit_var, _reference(w_out, unembed.t()), rtol=1e-4, atol=0.0)
    assert not torch.allclose(raw.logit_var, folded.logit_var, rtol=1e-2)
    torch.testing.assert_close(raw.norm, w_out.double().norm(dim=0))


@pytest.mark.parametrize("chunk_size", [1, 7, 96, 97, 1000])
def test_chunked_logit_var_equals_unchunked(chunk_size: int) -> None:
    w_out, unembed, gain = _weights(seed=3)
    whole = logit_var(w_out, unembed, gain, chunk_size=unembed.shape[0],
                      compute_dtype=torch.float64)
    chunked = logit_var(w_out, unembed, gain, chunk_size=chunk_size, compute_dtype=torch.float64)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=0.0)


def test_logit_var_keeps_precision_when_the_mean_cosine_dominates() -> None:
    # every column nearly parallel to one direction: mean cos ~ 1, variance ~ 1e-15. The naive
    # E[x^2] - E[x]^2 loses it even in float64; merged per-chunk deviations keep it.
    g = torch.Generator().manual_seed(4)
    d, vocab = 16, 500
    base = torch.randn(d, generator=g, dtype=torch.float64)
    unembed = base + 1e-4 * torch.randn(vocab, d, generator=g, dtype=torch.float64)
    w_out = base[:, None].repeat(1, 3) + 1e-3 * torch.randn(d, 3, generator=g, dtype=torch.float64)
    ours = logit_var(w_out, unembed, None, center_unembed=False, chunk_size=64,
                     compute_dtype=torch.float64)
    ref = _reference(w_out, unembed.t())
    assert float(ref.max()) < 1e-12
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0.0)


def test_logit_var_accepts_bf16_weights_without_changing_them() -> None:
    w_out, unembed, gain = _weights(seed=5)
    w16, u16 = w_out.to(torch.bfloat16), unembed.to(torch.bfloat16)
    before = (w16.clone(), u16.clone())
    ours = logit_var(w16, u16, gain, chunk_size=16)
    ref = _reference(w16.float(), _tl_style_unembed(u16.float(), gain, layernorm=False))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0.0)
    assert torch.equal(w16, before[0])
    assert torch.equal(u16, before[1])
    f32 = w_out.clone()
    logit_var(f32, unembed, gain)
    assert torch.equal(f32, w_out)  # float32 input is not normalised in place


def test_logit_var_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="d_model"):
        logit_var(torch.ones(4, 3), torch.ones(10, 5))


def _stats(norm: list[float], var: list[float]) -> NeuronStats:
    return NeuronStats(torch.tensor(norm, dtype=torch.float64),
                       torch.tensor(var, dtype=torch.float64), folded=True)


def test_selection_keeps_the_strict_top_norm_share_then_lowest_variance() -> None:
    # 8 neurons; quantile_0.75 of norms 1..8 = 6.25 -> pool {6, 7} (norms 7, 8) ... use k=1
    stats = _stats([1, 2, 3, 4, 5, 6, 7, 8], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.2])
    sel = select_entropy_neurons(stats, k=1, norm_top=0.25)
    assert sel.pool == (6, 7)
    assert sel.indices == (7,)
    assert sel.norm_threshold == pytest.approx(6.25)
    assert sel.ratios[7] == pytest.approx(8 / math.log(0.2))


def test_selection_excludes_a_neuron_exactly_at_the_quantile() -> None:
    stats = _stats([1, 1, 1, 1, 2], [0.1, 0.1, 0.1, 0.1, 0.9])
    # quantile_0.5 = 1: only the neuron with norm 2 is strictly above
    assert select_entropy_neurons(stats, k=3, norm_top=0.5).pool == (4,)


def test_selection_breaks_variance_ties_by_lower_index_and_returns_small_pools_whole() -> None:
    stats = _stats([5, 5, 5, 5, 1], [0.3, 0.2, 0.2, 0.1, 0.0])
    sel = select_entropy_neurons(stats, k=3, norm_top=0.8)
    assert sel.indices == (3, 1, 2)
    whole = select_entropy_neurons(stats, k=10, norm_top=0.8)
    assert sorted(whole.indices) == [0, 1, 2, 3]


def test_selection_ratio_clamps_the_variance_like_the_paper() -> None:
    stats = _stats([2.0], [0.0])
    assert float(stats.ratio[0]) == pytest.approx(2.0 / math.log(1e-10))


@pytest.mark.parametrize(("norm_top", "k"), [(0.0, 10), (1.5, 10), (0.25, 0)])
def test_selection_rejects_bad_parameters(norm_top: float, k: int) -> None:
    with pytest.raises(ValueError):
        select_entropy_neurons(_stats([1, 2], [0.1, 0.2]), k=k, norm_top=norm_top)


def test_overlap_is_shared_count_and_iou() -> None:
    assert overlap(range(10), [*range(8), 50, 51]) == (8, pytest.approx(8 / 12))
    assert overlap([], []) == (0, 0.0)


def test_random_pool_overlap_matches_the_hypergeometric_mean() -> None:
    reference = list(range(10))
    pool = list(range(5, 105))  # 5 of the reference are in the pool
    draws = random_pool_overlaps(reference, pool, k=10, n_draws=4000, seed=0)
    exact = expected_chance_overlap(reference, pool, k=10)
    assert exact == pytest.approx(0.5)
    assert float(draws.float().mean()) == pytest.approx(exact, abs=0.05)
    assert torch.equal(draws, random_pool_overlaps(reference, pool, 10, 4000, seed=0))


def test_random_pool_draw_is_seeded_and_inside_the_pool() -> None:
    pool = list(range(100, 200))
    draw = random_pool_draw(pool, 10, seed=3)
    assert len(set(draw)) == 10
    assert set(draw) <= set(pool)
    assert draw == random_pool_draw(pool, 10, seed=3) != random_pool_draw(pool, 10, seed=4)


# -- E3 against TransformerLens's own processing, on tiny checkpoints ------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma2"])
def test_folded_logit_var_equals_transformer_lens_processing(arch: str, tiny_root: Path) -> None:
    """Our raw-basis computation equals the paper's formula on TransformerLens-processed weights
    (``TransformerBridge`` compatibility mode = ``HookedTransformer`` defaults) to rtol 1e-4."""
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    import transformers

    from mechtests.engine import load_backend
    from mechtests.engine.tiny import resolve
    from mechtests.methods.entropy_neurons import neuron_stats

    src = resolve(f"{arch}/base", tiny_root)
    path = tiny_root / f"{arch}-gain"
    if not path.exists():  # give the final norm a non-trivial gain so that folding matters
        model = transformers.AutoModelForCausalLM.from_pretrained(src)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            w = model.model.norm.weight
            w.copy_(w + 0.5 * torch.randn(w.shape, generator=gen))
        model.save_pretrained(path)
        transformers.AutoTokenizer.from_pretrained(src).save_pretrained(path)
    backend = load_backend(path, device="cpu")
    softcap = json.loads((path / "config.json").read_text()).get("final_logit_softcapping")
    ours = neuron_stats(backend.readout_weights(), softcap=softcap)
    bridge = bridge_mod.TransformerBridge.boot_transformers(str(path), device="cpu",
                                                            dtype=torch.float32)
    bridge.enable_compatibility_mode(disable_warnings=True)
    w_out, w_u = bridge.W_out[-1].detach(), bridge.W_U.detach()
    torch.testing.assert_close(ours.logit_var, _reference(w_out.t(), w_u), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(ours.norm, w_out.double().norm(dim=1), rtol=1e-6, atol=0.0)
    unfolded = neuron_stats(backend.readout_weights(), fold=False)
    assert not torch.allclose(unfolded.logit_var, ours.logit_var, rtol=1e-3)
