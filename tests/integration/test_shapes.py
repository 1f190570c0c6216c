"""Real-shape random-weight families (mechtests/families/shape.py, checkpoints/shape.py,
engine/random_weights.py).

Every preset's architecture is built on the meta device (no memory) and compared with its
recorded shape: 2 layers for the module shapes, the full depth for the parameter count against
the published size. One model, the smallest preset (Qwen1.5-0.5B, 2 layers, bf16: ~0.36 GB), is
really instantiated through ``load_backend`` on CPU; instantiating an 8B-wide model here would
cost seconds and GBs without checking anything the meta build does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mechtests.checkpoints.shape import checkpoint_config, synthetic_vocab
from mechtests.errors import CheckpointError, ConfigError
from mechtests.families import load_families, resolve_checkpoint
from mechtests.families.shape import LAYERS_ENV, load_shapes, parse_shape_layers, scale_layer

PRESETS = ("llama31", "mistral", "llama2-13b", "llama2-7b", "gemma2-9b", "qwen15-0.5b")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _meta_model(preset: str, n_layers: int) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = load_shapes()[preset]
    config = checkpoint_config(shape, n_layers, synthetic_vocab(int(shape.config["vocab_size"])))
    hf = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16,
                                                 attn_implementation="eager")
    return model, shape.config


def test_every_paper_preset_has_a_recorded_shape_with_a_cited_source() -> None:
    shapes = load_shapes()
    assert set(shapes) == {*PRESETS, "organism"}
    families = load_families()
    for name in PRESETS:
        assert shapes[name].source.startswith("public config.json of "), name
    for name, shape in shapes.items():
        assert shape.config["model_type"] == families[name].architecture


def test_organism_shape_is_the_ci_organism_recipe() -> None:
    from mechtests.organism import corpus
    from mechtests.organism.config import size_config
    from mechtests.organism.tokenizer import vocabulary
    from mechtests.organism.train import make_model
    from mechtests.organism.world import make_world

    vocab = vocabulary(corpus.lexicon(make_world()))
    with torch.device("meta"):
        real = make_model(size_config("ci"), vocab, seed=0).config
    cfg = load_shapes()["organism"].config
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                "tie_word_embeddings"):
        assert cfg[key] == getattr(real, key), key


@pytest.mark.parametrize("preset", PRESETS)
def test_two_layer_model_has_the_presets_recorded_widths(preset: str) -> None:
    model, cfg = _meta_model(preset, 2)
    hidden, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim, inter, vocab = cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]
    layers = model.model.layers
    assert len(layers) == 2
    attn, mlp = layers[0].self_attn, layers[0].mlp
    assert tuple(attn.q_proj.weight.shape) == (heads * head_dim, hidden)
    assert tuple(attn.k_proj.weight.shape) == (kv * head_dim, hidden)
    assert tuple(attn.v_proj.weight.shape) == (kv * head_dim, hidden)
    assert tuple(attn.o_proj.weight.shape) == (hidden, heads * head_dim)
    assert tuple(mlp.gate_proj.weight.shape) == (inter, hidden)
    assert tuple(mlp.down_proj.weight.shape) == (hidden, inter)
    assert tuple(model.model.embed_tokens.weight.shape) == (vocab, hidden)
    assert tuple(model.lm_head.weight.shape) == (vocab, hidden)
    assert (attn.q_proj.bias is not None) == load_shapes()[preset].qkv_bias
    assert model.config.tie_word_embeddings == cfg["tie_word_embeddings"]
    assert model.config.rms_norm_eps == cfg["rms_norm_eps"]
    rope = model.config.rope_parameters or {}
    assert rope.get("rope_theta", getattr(model.config, "rope_theta", None)) == cfg["rope_theta"]
    if cfg.get("rope_scaling"):
        assert rope["rope_type"] == cfg["rope_scaling"]["rope_type"]
        assert rope["factor"] == cfg["rope_scaling"]["factor"]
    if preset == "gemma2-9b":
        assert (model.config.attn_logit_softcapping, model.config.final_logit_softcapping,
                model.config.sliding_window, model.config.query_pre_attn_scalar) == (
            50.0, 30.0, 4096, 256)


@pytest.mark.parametrize("preset", [*PRESETS, "organism"])
def test_full_depth_model_has_the_published_parameter_count(preset: str) -> None:
    shape = load_shapes()[preset]
    model, _ = _meta_model(preset, shape.n_layers)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert abs(params / shape.n_params - 1) < 0.01, f"{preset}: {params / 1e9:.3f}B"


def test_smallest_preset_instantiates_with_random_weights_on_cpu(tmp_path: Path) -> None:
    from mechtests.engine import load_backend
    from mechtests.engine.random_weights import MARKER

    path = resolve_checkpoint("shape:qwen15-0.5b@2/base", tmp_path)
    assert (path / MARKER).is_file()
    assert not list(path.glob("*.safetensors"))
    assert not list(path.glob("*.bin"))
    backend = load_backend(path, device="cpu", dtype="bfloat16", name="qwen15-0.5b-shape/base")
    model = backend.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, one allocation
    assert (backend.n_layers, backend.d_model, model.config.vocab_size) == (2, 1024, 151936)
    std = float(model.model.layers[0].mlp.up_proj.weight.float().std())
    assert abs(std - 0.02) < 0.002  # initializer_range, not uninitialised memory
    logits = backend.forward(backend.tokenize(["the city of fova is in rofuvir ."]))
    assert logits.shape[-1] == 151936
    assert bool(torch.isfinite(logits).all())
    other = resolve_checkpoint("shape:qwen15-0.5b@2/instruct", tmp_path)
    assert json.loads((other / MARKER).read_text())["seed"] != json.loads(
        (path / MARKER).read_text())["seed"]


def test_synthetic_tokenizer_gives_the_cities_prompt_its_real_length(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from mechtests.data.sources import dataset_source
    from mechtests.data.statements import build_queries, load_few_shot, load_statements

    path = resolve_checkpoint("shape:llama31@1/base", tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    assert len(tok) == 128256
    data = dataset_source("builtin:organism", None)
    queries, _ = build_queries(load_few_shot(data, "cities"),
                               load_statements(data, "cities").statements[:20],
                               " This statement is:")
    lengths = [len(tok(q)["input_ids"]) for q in queries]
    assert 65 <= min(lengths)
    assert max(lengths) <= 90


def test_shape_families_are_random_weights_with_scaled_layers() -> None:
    fams = load_families(shape_layers=2)
    fam, preset = fams["llama31-shape"], fams["llama31"]
    assert fam.random_weights
    assert fam.datasets == "builtin:organism"
    assert fam.models["sft"].ref == "shape:llama31@2/sft"
    assert set(fam.models) == set(preset.models)
    assert fam.truth.intervene_layer <= fam.truth.probe_layer <= 1
    assert fam.refusal.layer <= 1
    assert fam.refusal.templates == preset.refusal.templates
    assert scale_layer(31, 32, 32) == 31
    assert scale_layer(12, 2, 32) == 1
    assert scale_layer(0, 2, 32) == 0
    assert scale_layer(8, 1, 32) == 0


def test_the_depth_is_passed_in_and_a_bad_depth_text_names_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAYERS_ENV, "two")
    assert load_families()["llama31-shape"].models["base"].ref == "shape:llama31/base"
    assert parse_shape_layers(" 3 ") == 3
    assert parse_shape_layers(None) is None
    with pytest.raises(ConfigError, match=LAYERS_ENV):
        parse_shape_layers("two")


def test_malformed_or_too_deep_shape_reference_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="shape:<family>"):
        resolve_checkpoint("shape:llama31", tmp_path)
    with pytest.raises(CheckpointError, match="unknown"):
        resolve_checkpoint("shape:gpt5/base", tmp_path)
    with pytest.raises(ConfigError, match=r"1\.\.32"):
        resolve_checkpoint("shape:llama31@64/base", tmp_path)
