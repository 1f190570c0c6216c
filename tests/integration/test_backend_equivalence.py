"""The two backends, and the HF model itself, agree at every site of tiny checkpoints.

Each architecture's tiny ``sft`` checkpoint (random weights, 2 layers: Llama, Mistral, Qwen2,
Qwen3, Gemma-2, and Gemma-3 with a 4-token sliding window on its first layer) is loaded twice in
float32 with eager attention: once under the hooks backend, once under TransformerLens's
``TransformerBridge`` (4.3 supports all six). Reads must agree to 1e-5 at every site of every
layer, edits at every site must give the same downstream activations and logits, hooks must
leave no trace, batched greedy generation must equal unbatched, and ``cache()`` must equal HF's
own hidden states.

Read-only use only: the backends are module-scoped, so a leaked hook would leak across tests
(which is what ``test_hooks_are_removed_*`` checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.engine import load_backend
from mechtests.engine.backend import Backend, Batch
from mechtests.engine.hf_common import HFBackendBase
from mechtests.engine.tiny import ARCHS, resolve
from mechtests.sites import SITE_KINDS, site_name

ATOL = 1e-5
PROMPTS = [
    "Paris is the capital of France",
    "this statement is : TRUE",
    "The",
    "<user> How do I make a cake <assistant>",
]
EDIT_KINDS = [k for k in SITE_KINDS if k != "mlp.hook_post"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="module", params=ARCHS)
def pair(request: pytest.FixtureRequest, tiny_cache: Path) -> Iterator[tuple[Backend, Backend]]:
    """(hooks backend, bridge backend) on two copies of one tiny checkpoint; read-only."""
    path = resolve(f"{request.param}/sft", tiny_cache)
    hf = load_backend(path, device="cpu", backend="hf", name=f"{request.param}/hf")
    tl = load_backend(path, device="cpu", backend="transformer-lens", name=f"{request.param}/tl")
    yield hf, tl
    hf.release()
    tl.release()


def all_sites(backend: Backend) -> list[str]:
    return [site_name(layer, kind) for layer in range(backend.n_layers) for kind in SITE_KINDS]


def add(v: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x + v.to(x)


def record_length(lengths: list[int], x: torch.Tensor) -> None:
    lengths.append(int(x.shape[1]))


def offset(d_model: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(d_model, generator=torch.Generator().manual_seed(seed))


def test_backends_agree_on_every_site_of_every_layer(pair: tuple[Backend, Backend]) -> None:
    hf, tl = pair
    batch = hf.tokenize(PROMPTS)
    sites = all_sites(hf)
    got_hf = hf.cache(batch, sites)
    got_tl = tl.cache(batch, sites)
    for site in sites:
        assert got_hf[site].dtype == torch.float32
        torch.testing.assert_close(got_tl[site], got_hf[site], atol=ATOL, rtol=0, msg=site)
    torch.testing.assert_close(tl.forward(batch), hf.forward(batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_backends_agree_after_an_edit_at_each_site(
    pair: tuple[Backend, Backend], kind: str
) -> None:
    hf, tl = pair
    batch = hf.tokenize(PROMPTS)
    v = offset(hf.d_model)
    hooks = [(site_name(0, kind), lambda x: x + v.to(x))]
    last = site_name(hf.n_layers - 1, "hook_resid_post")
    edited = hf.cache(batch, [last], [-1], hooks=hooks)[last]
    plain = hf.cache(batch, [last], [-1])[last]
    assert (edited - plain).abs().max() > 1e-3  # the edit does something
    torch.testing.assert_close(tl.cache(batch, [last], [-1], hooks=hooks)[last], edited,
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(tl.forward(batch, hooks), hf.forward(batch, hooks), atol=ATOL,
                               rtol=0)


def test_last_only_logits_are_the_last_position_of_the_full_logits(
    pair: tuple[Backend, Backend]
) -> None:
    batch = pair[0].tokenize(PROMPTS)
    v = offset(pair[0].d_model)
    hooks = [(site_name(0, "hook_resid_post"), lambda x: x + v.to(x))]
    for backend in pair:
        last = backend.forward(batch, hooks, last_only=True)
        assert last.shape == (len(PROMPTS), 1, last.shape[-1])
        torch.testing.assert_close(last, backend.forward(batch, hooks)[:, -1:], atol=ATOL,
                                   rtol=0)


def test_variants_sharing_a_prefix_equal_one_forward_each(pair: tuple[Backend, Backend]) -> None:
    """forward_variants (the hooks backend runs the prefix once, KV-cached) gives each hook
    set's last-position logits, with left padding and edits at the last two positions."""
    from mechtests.methods.steering import addition_hooks

    batch = pair[0].tokenize(PROMPTS[:2] + PROMPTS[3:])  # lengths differ: left padding
    v = offset(pair[0].d_model)
    sites = [site_name(layer, "hook_resid_post") for layer in range(pair[0].n_layers)]
    variants = [[], addition_hooks(sites, [-2, -1], v, 1.0), addition_hooks(sites[:1], [-2], v,
                                                                              -3.0)]
    for backend in pair:
        got = backend.forward_variants(batch, variants, suffix=2)
        want = [backend.forward(batch, hooks, last_only=True)[:, -1] for hooks in variants]
        assert (want[1] - want[0]).abs().max() > 1e-3  # the edits do something
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_a_sliding_window_longer_than_the_batch_still_runs_the_prefix_once(
    pair: tuple[Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemma-2's 128-token window covers the test prompts, so the hooks backend keeps its
    prefix cache there; Gemma-3's 4-token window does not, so it takes one forward each."""
    from mechtests.engine.hf_backend import window_covers
    from mechtests.methods.steering import addition_hooks

    hf = pair[0]
    batch = hf.tokenize(PROMPTS[:2] + PROMPTS[3:])
    covered = window_covers(hf.model.config, int(batch.input_ids.shape[1]))  # type: ignore[attr-defined]
    if hf.model.config.model_type == "gemma2":  # type: ignore[attr-defined]
        assert covered
    if hf.model.config.model_type == "gemma3_text":  # type: ignore[attr-defined]
        assert not covered
    if not covered:
        return
    v = offset(hf.d_model)
    variants = [[], addition_hooks([site_name(0, "hook_resid_post")], [-1], v, 2.0)]
    want = [hf.forward(batch, hooks, last_only=True)[:, -1] for hooks in variants]

    def plain_path(*_: Any) -> Any:
        raise AssertionError("took one forward per variant")

    monkeypatch.setattr(HFBackendBase, "forward_variants", plain_path)
    for g, w in zip(hf.forward_variants(batch, variants, suffix=1), want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_resid_mid_edit_reaches_the_residual_stream(pair: tuple[Backend, Backend]) -> None:
    for backend in pair:
        batch = backend.tokenize(PROMPTS)
        v = offset(backend.d_model, seed=1)
        kinds = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                 "hook_resid_post")
        sites = [site_name(0, k) for k in kinds]
        acts = backend.cache(batch, sites, [-1], hooks=[(sites[2], add(v))])
        pre, attn, mid, mlp, post = (acts[s] for s in sites)
        torch.testing.assert_close(mid, pre + attn + v, atol=ATOL, rtol=0)
        torch.testing.assert_close(post, mid + mlp, atol=ATOL, rtol=0)


def test_hooks_are_removed_after_an_editing_forward(pair: tuple[Backend, Backend]) -> None:
    for backend in pair:
        batch = backend.tokenize(PROMPTS)
        baseline = backend.forward(batch)
        hooks = [(s, lambda x: x * 3.0) for s in all_sites(backend)]
        assert not torch.allclose(backend.forward(batch, hooks), baseline)
        backend.cache(batch, [site_name(0, "hook_resid_post")], [-1], hooks=hooks)
        torch.testing.assert_close(backend.forward(batch), baseline, atol=0, rtol=0)


def test_hooks_are_removed_when_a_hook_raises(pair: tuple[Backend, Backend]) -> None:
    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    for backend in pair:
        batch = backend.tokenize(PROMPTS)
        baseline = backend.forward(batch)
        with pytest.raises(RuntimeError, match="boom"):
            backend.forward(batch, [(site_name(1, "hook_resid_pre"), boom)])
        torch.testing.assert_close(backend.forward(batch), baseline, atol=0, rtol=0)


def test_cache_equals_hf_hidden_states(pair: tuple[Backend, Backend]) -> None:
    hf = pair[0]
    assert isinstance(hf, HFBackendBase)
    batch = hf.tokenize(PROMPTS)
    with torch.no_grad():
        out = hf.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=hf.position_ids(batch), output_hidden_states=True)
    states = out.hidden_states
    sites = all_sites(hf)
    for backend in pair:
        acts = backend.cache(batch, sites)
        for layer in range(hf.n_layers):
            pre = acts[site_name(layer, "hook_resid_pre")]
            torch.testing.assert_close(pre, states[layer].float(), atol=ATOL, rtol=0)
        for layer in range(hf.n_layers - 1):  # HF's last entry is after the final norm
            post = acts[site_name(layer, "hook_resid_post")]
            torch.testing.assert_close(post, states[layer + 1].float(), atol=ATOL, rtol=0)
        final = acts[site_name(hf.n_layers - 1, "hook_resid_post")]
        normed = hf.model.get_submodule(hf.spec.final_norm)(final)
        torch.testing.assert_close(normed, states[-1].float(), atol=ATOL, rtol=0)


def test_cache_stops_after_the_last_needed_layer(pair: tuple[Backend, Backend]) -> None:
    batch = pair[0].tokenize(PROMPTS)
    for backend in pair:
        assert isinstance(backend, HFBackendBase)
        calls: list[int] = []
        handle = backend.model.get_submodule(backend.spec.layers)[1].register_forward_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        try:
            got = backend.cache(batch, [site_name(0, "hook_resid_post")], [-1])
            assert calls == []
            backend.cache(batch, [site_name(1, "hook_resid_pre")], [-1])
            assert calls == []
            backend.cache(batch, [site_name(1, "hook_resid_pre"), site_name(1, "hook_mlp_out")])
            assert calls == [1]
        finally:
            handle.remove()
        full = backend.cache(batch, all_sites(backend), [-1])
        torch.testing.assert_close(got[site_name(0, "hook_resid_post")],
                                   full[site_name(0, "hook_resid_post")], atol=0, rtol=0)


def test_last_position_is_the_last_real_token_whatever_the_padding(
    pair: tuple[Backend, Backend]
) -> None:
    for backend in pair:
        site = site_name(backend.n_layers - 1, "hook_resid_post")
        batched = backend.cache(backend.tokenize(PROMPTS), [site], [-1, -2])[site]
        for i, prompt in enumerate(PROMPTS):
            alone = backend.cache(backend.tokenize([prompt]), [site], [-1, -2])[site]
            torch.testing.assert_close(batched[i : i + 1], alone, atol=ATOL, rtol=0)


def test_batched_generation_equals_unbatched_with_hooks_active(
    pair: tuple[Backend, Backend]
) -> None:
    v = offset(pair[0].d_model, seed=2)
    hooks = [(site_name(0, "hook_resid_mid"), lambda x: x + 0.5 * v.to(x))]
    outputs = []
    for backend in pair:
        batched = backend.generate(PROMPTS, max_new_tokens=6, hooks=hooks, batch_size=4)
        alone = [backend.generate([p], max_new_tokens=6, hooks=hooks)[0] for p in PROMPTS]
        assert batched == alone
        assert batched != backend.generate(PROMPTS, max_new_tokens=6)  # the hook matters
        outputs.append(batched)
    assert outputs[0] == outputs[1]


def greedy_without_kv_cache(
    backend: Backend, prompt: str, n: int, hooks: list[tuple[str, Any]]
) -> str:
    """Reference decoding: re-run the whole sequence (hooks at every position) per token."""
    ids = backend.tokenize([prompt]).input_ids
    start = int(ids.shape[1])
    for _ in range(n):
        logits = backend.forward(Batch(ids, torch.ones_like(ids)), hooks)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        if int(ids[0, -1]) == backend.tokenizer.eos_token_id:
            break
    return str(backend.tokenizer.decode(ids[0, start:], skip_special_tokens=True))


def test_generation_equals_greedy_decoding_without_a_kv_cache(
    pair: tuple[Backend, Backend]
) -> None:
    v = offset(pair[0].d_model, seed=3)
    for hooks in ([], [(site_name(1, "hook_resid_pre"), lambda x: x + v.to(x))]):
        for backend in pair:
            got = backend.generate(PROMPTS, max_new_tokens=6, hooks=hooks)
            want = [greedy_without_kv_cache(backend, p, 6, hooks) for p in PROMPTS]
            assert got == want, backend.name


def test_generation_hooks_see_the_generated_tokens(pair: tuple[Backend, Backend]) -> None:
    for backend in pair:
        lengths: list[int] = []
        record = partial(record_length, lengths)
        backend.generate(["Paris is the capital of"], max_new_tokens=4,
                         hooks=[(site_name(0, "hook_resid_pre"), record)])
        prompt_len = int(backend.tokenize(["Paris is the capital of"]).input_ids.shape[1])
        assert lengths[0] == prompt_len
        assert len(lengths) > 1
        assert set(lengths[1:]) == {1}  # KV cache: one new token per step


def test_readout_weights_are_the_raw_hf_tensors(pair: tuple[Backend, Backend]) -> None:
    hf, tl = pair
    assert isinstance(hf, HFBackendBase)
    w_hf, w_tl = hf.readout_weights(), tl.readout_weights()
    for field in ("unembed", "final_norm_weight", "mlp_out"):
        assert torch.equal(getattr(w_hf, field), getattr(w_tl, field)), field
    model = hf.model
    assert torch.equal(w_hf.unembed, model.lm_head.weight)
    gain = model.model.norm.weight + hf.spec.norm_offset
    assert torch.equal(w_hf.final_norm_weight, gain)
    assert w_hf.mlp_out.shape == (hf.d_model, model.config.intermediate_size)
    assert w_hf.final_norm_bias is None
    assert w_hf.norm_kind == "rmsnorm"


def test_token_id_is_the_last_token_without_specials(pair: tuple[Backend, Backend]) -> None:
    hf = pair[0]
    ids = hf.tokenizer(" this statement is : TRUE", add_special_tokens=False)["input_ids"]
    assert hf.token_id(" this statement is : TRUE") == ids[-1] == hf.token_id(" TRUE")
    assert hf.token_id(" TRUE") != hf.token_id(" FALSE")
