"""A decoder without an entry in the site table is recognised from its module tree
(mechtests.engine.layout): the recognised spec equals the table's for every tiny architecture,
an unseen sandwich-norm decoder (OLMo-2) runs through the hooks backend with HF's own hidden
states, and a parallel block (GPT-J) is a one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.engine import load_backend
from mechtests.engine.archs import ARCH_SPECS
from mechtests.engine.hf_backend import HooksBackend
from mechtests.engine.layout import recognise
from mechtests.engine.tiny import ARCHS, build_tokenizer, build_vocab, resolve
from mechtests.errors import CheckpointError
from mechtests.sites import site_name

PROMPTS = ["Paris is the capital of France", "this statement is : TRUE"]


def random_model(model_type: str, **extra: Any) -> Any:
    import transformers

    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=len(build_vocab()), pad_token_id=0, bos_token_id=2,
        eos_token_id=3, **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_recognised_layout_equals_the_table_for_every_tiny_architecture(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    backend = load_backend(resolve(f"{arch}/base", tmp_path_factory.mktemp(arch)),
                           device="cpu")
    assert isinstance(backend, HooksBackend)
    assert recognise(backend.model) == ARCH_SPECS[str(backend.model.config.model_type)]


def test_an_unseen_sandwich_norm_decoder_runs_with_hf_hidden_states() -> None:
    model = random_model("olmo2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64)
    assert "olmo2" not in ARCH_SPECS
    backend = HooksBackend(model, build_tokenizer(build_vocab()), name="olmo2")
    assert (backend.spec.attn_contrib, backend.spec.mlp_contrib) == (
        "post_attention_layernorm", "post_feedforward_layernorm")
    batch = backend.tokenize(PROMPTS)
    sites = [site_name(layer, kind) for layer in range(2)
             for kind in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out")]
    acts = backend.cache(batch, [*sites, site_name(0, "hook_resid_post")])
    with torch.no_grad():
        states = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=backend.position_ids(batch),
                       output_hidden_states=True).hidden_states
    for layer in range(2):
        torch.testing.assert_close(acts[site_name(layer, "hook_resid_pre")], states[layer])
        mid = acts[site_name(layer, "hook_resid_mid")]
        torch.testing.assert_close(mid, acts[site_name(layer, "hook_resid_pre")]
                                   + acts[site_name(layer, "hook_attn_out")])
    torch.testing.assert_close(acts[site_name(0, "hook_resid_post")], states[1])
    torch.testing.assert_close(
        acts[site_name(0, "hook_resid_mid")] + acts[site_name(0, "hook_mlp_out")], states[1])


def test_a_parallel_block_is_a_one_line_error_naming_the_fix() -> None:
    model = random_model("gptj", n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)
    with pytest.raises(CheckpointError, match=r"model_type 'gptj'.*Fix: add an ArchSpec") as info:
        HooksBackend(model, build_tokenizer(build_vocab()), name="gptj")
    assert "\n" not in str(info.value)


def test_a_table_architecture_needs_no_probe_forward(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import mechtests.engine.layout as layout

    def fail(_model: Any) -> None:
        raise AssertionError("recognise() ran for a table architecture")

    monkeypatch.setattr(layout, "recognise", fail)
    assert load_backend(resolve("qwen3/base", tmp_path), device="cpu").spec == ARCH_SPECS["qwen3"]
