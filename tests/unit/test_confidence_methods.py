"""Next-token entropy and mean-ablation of final-layer neurons
(bpwu1/confidence-regulation-neurons, Stolfo et al.)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mechtests.engine.backend import Backend
from mechtests.methods.confidence import (
    FinalReadout,
    ablation_entropies,
    ablation_entropies_many,
    kept_entropies,
    neuron_means,
    token_entropy,
)

PROMPTS = [
    "The city of Paris is in France .",
    "Berlin is the capital of Germany",
    "How do I make a cake ?",
    "Tokyo",
]


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[
    Backend, FinalReadout
]:
    from mechtests.engine import load_backend
    from mechtests.engine.tiny import resolve

    path = resolve(f"{request.param}/instruct", tmp_path_factory.mktemp("tiny"))
    backend = load_backend(path, device="cpu")
    config = json.loads((path / "config.json").read_text())
    readout = FinalReadout.from_weights(
        backend.readout_weights(), config["rms_norm_eps"], config.get("final_logit_softcapping")
    )
    return backend, readout


def test_token_entropy_is_log_vocab_for_uniform_and_zero_for_one_hot() -> None:
    assert float(token_entropy(torch.zeros(3, 7))[0]) == pytest.approx(math.log(7), rel=1e-6)
    one_hot = torch.full((1, 5), -1e4)
    one_hot[0, 2] = 0.0
    assert float(token_entropy(one_hot)[0]) == pytest.approx(0.0, abs=1e-6)


def test_readout_reproduces_the_backend_logits(tiny: tuple[Backend, FinalReadout]) -> None:
    backend, readout = tiny
    batch = backend.tokenize(PROMPTS)
    site = f"blocks.{backend.n_layers - 1}.hook_resid_post"
    x = backend.cache(batch, [site])[site]
    logits = backend.forward(batch)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(readout.logits(x)[mask], logits[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(readout.logits(x, scale=readout.scale(x)), readout.logits(x))


def test_neuron_means_average_real_positions_after_the_first(
    tiny: tuple[Backend, FinalReadout],
) -> None:
    backend, _ = tiny
    site = f"blocks.{backend.n_layers - 1}.mlp.hook_post"
    acts = []
    for prompt in PROMPTS:  # one prompt at a time: no padding at all
        batch = backend.tokenize([prompt])
        acts.append(backend.cache(batch, [site])[site][0, 1:])
    expected = torch.cat(acts).double().mean(dim=0)[[3, 5, 7]]
    got = neuron_means(backend, PROMPTS, [3, 5, 7], batch_size=3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_ablating_no_neurons_changes_nothing(tiny: tuple[Backend, FinalReadout]) -> None:
    backend, readout = tiny
    res = ablation_entropies(backend, PROMPTS, [], readout)
    assert torch.equal(res.clean, res.total)
    assert torch.equal(res.clean, res.direct)
    assert res.readout_error < 1e-3
    assert res.clean.shape == (len(PROMPTS),)


def test_total_and_direct_effects_match_an_independent_computation(
    tiny: tuple[Backend, FinalReadout],
) -> None:
    backend, readout = tiny
    neurons = [1, 4, 9]
    res = ablation_entropies(backend, PROMPTS, neurons, readout, batch_size=2)
    last = backend.n_layers - 1
    post, resid = f"blocks.{last}.mlp.hook_post", f"blocks.{last}.hook_resid_post"
    means = res.means.float()

    def ablate(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        act[..., neurons] = means
        return act

    for i, prompt in enumerate(PROMPTS):
        batch = backend.tokenize([prompt])
        ablated_logits = backend.forward(batch, hooks=[(post, ablate)])[0, 1:]
        total = token_entropy(ablated_logits).double().mean()
        assert float(res.total[i]) == pytest.approx(float(total), rel=1e-4, abs=1e-5)
        x_clean = backend.cache(batch, [resid])[resid][0, 1:]
        x_abl = backend.cache(batch, [resid], hooks=[(post, ablate)])[resid][0, 1:]
        direct = token_entropy(readout.logits(x_abl, scale=readout.scale(x_clean)))
        assert float(res.direct[i]) == pytest.approx(float(direct.double().mean()), rel=1e-4)
        clean = token_entropy(backend.forward(batch)[0, 1:]).double().mean()
        assert float(res.clean[i]) == pytest.approx(float(clean), rel=1e-4, abs=1e-5)


def test_frozen_scale_differs_from_recomputed_scale_only_through_the_norm() -> None:
    # a change along x itself is undone by a recomputed RMSNorm scale, kept by a frozen one
    readout = FinalReadout(torch.eye(4), torch.ones(4), None, eps=0.0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    x_scaled = 3.0 * x
    torch.testing.assert_close(readout.logits(x_scaled), readout.logits(x))
    frozen = readout.logits(x_scaled, scale=readout.scale(x))
    torch.testing.assert_close(frozen, 3.0 * readout.logits(x))
    assert float(token_entropy(frozen)[0]) < float(token_entropy(readout.logits(x))[0])


def test_layernorm_readout_centres_and_adds_the_bias() -> None:
    readout = FinalReadout(torch.eye(3), torch.full((3,), 2.0), torch.tensor([1.0, 0.0, 0.0]),
                           eps=0.0, norm_kind="layernorm")
    x = torch.tensor([[1.0, 2.0, 3.0]])
    expected = (x - 2.0) / math.sqrt(2.0 / 3.0) * 2.0 + torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(readout.logits(x), expected)


def test_softcap_bounds_the_logits() -> None:
    readout = FinalReadout(torch.eye(2) * 100, torch.ones(2), None, eps=0.0, softcap=30.0)
    assert float(readout.logits(torch.tensor([[1.0, -1.0]])).abs().max()) <= 30.0



def test_sets_sharing_one_clean_pass_equal_one_run_per_set(
    tiny: tuple[Backend, FinalReadout],
) -> None:
    backend, readout = tiny
    sets = {"a": [1, 4, 9], "b": [2, 3], "none": []}
    means = {name: neuron_means(backend, PROMPTS, s, batch_size=3) if s else torch.zeros(0)
             for name, s in sets.items()}
    many = ablation_entropies_many(backend, PROMPTS, {n: (s, means[n]) for n, s in sets.items()},
                                   readout, batch_size=3)
    for name, neurons in sets.items():
        one = ablation_entropies(backend, PROMPTS, neurons, readout, means=means[name],
                                 batch_size=3)
        for field in ("clean", "total", "direct"):
            assert torch.equal(getattr(many[name], field), getattr(one, field)), (name, field)
        assert many[name].neurons == tuple(neurons)


def test_entropies_of_kept_rows_in_small_blocks_equal_the_whole_readout(
    tiny: tuple[Backend, FinalReadout], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mechtests.methods.confidence as confidence

    backend, readout = tiny
    batch = backend.tokenize(PROMPTS)
    last = backend.n_layers - 1
    x = backend.cache(batch, [f"blocks.{last}.hook_resid_post"])[f"blocks.{last}.hook_resid_post"]
    keep = batch.attention_mask.bool()
    keep[:, -1] = False  # an excluded real position stays zero
    want = token_entropy(readout.logits(x)) * keep
    monkeypatch.setattr(confidence, "READOUT_BYTES", 4 * int(readout.unembed.shape[0]) * 3)
    got = kept_entropies(readout, x, keep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
