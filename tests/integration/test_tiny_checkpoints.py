"""Tiny random checkpoints (``tiny:<arch>/<role>``): deterministic, cached, and shaped as
documented in mechtests.engine.tiny."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechtests.engine import load_backend
from mechtests.engine.tiny import ARCHS, ROLES, SPECIALS, model_type, resolve
from mechtests.families import resolve_checkpoint


def digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


def test_builds_are_deterministic_across_cache_directories(cache: Path, tmp_path: Path) -> None:
    for role in ROLES:
        assert digest(resolve(f"llama/{role}", cache)) == digest(resolve(f"llama/{role}", tmp_path))


def test_a_built_checkpoint_is_reused_not_rebuilt(cache: Path) -> None:
    first = resolve("llama/base", cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = resolve("llama/base", cache)
    assert again == first
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.parent.iterdir() if p.name.startswith(".")]  # no temps


def test_the_tiny_scheme_resolves_through_families(cache: Path) -> None:
    assert resolve_checkpoint("tiny:qwen2/sft", cache) == resolve("qwen2/sft", cache)


def test_post_trained_roles_are_the_base_plus_scaled_noise_and_control_is_independent(
    cache: Path,
) -> None:
    weights = {role: load_file(str(resolve(f"llama/{role}", cache) / "model.safetensors"))
               for role in ROLES}
    name = "model.layers.0.mlp.down_proj.weight"
    base = weights["base"][name]
    for role, scale in (("sft", 0.05), ("instruct", 0.1)):
        ratio = float((weights[role][name] - base).std() / base.std())
        assert ratio == pytest.approx(scale, rel=0.1), role
    assert abs(float(torch.corrcoef(torch.stack(
        [weights["control"][name].flatten(), base.flatten()]))[0, 1])) < 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_loads_with_the_documented_shape(arch: str, cache: Path) -> None:
    backend = load_backend(resolve(f"{arch}/base", cache), device="cpu")
    try:
        config = backend.model.config  # type: ignore[attr-defined]
        assert config.model_type == model_type(arch)
        assert (backend.n_layers, backend.d_model) == (2, 64)
        assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
        assert (config.intermediate_size, config.max_position_embeddings) == (128, 256)
        assert backend.dtype == torch.float32
    finally:
        backend.release()


def test_tokenizer_splits_on_whitespace_adds_bos_and_pads_left(cache: Path) -> None:
    backend = load_backend(resolve("gemma2/base", cache), device="cpu")
    tok = backend.tokenizer
    assert tok.padding_side == "left"
    assert tuple(tok.convert_ids_to_tokens(list(range(len(SPECIALS))))) == SPECIALS
    ids = tok("this statement is : TRUE")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "this", "statement", "is", ":", "TRUE"]
    batch = backend.tokenize(["TRUE", "this statement is : TRUE"])
    assert batch.attention_mask[0].tolist() == [0, 0, 0, 0, 1, 1]
    assert int(batch.input_ids[0, 0]) == tok.pad_token_id
    chat = tok.apply_chat_template([{"role": "user", "content": "How"}], tokenize=False)
    assert chat == "<user> How <assistant>"
    backend.release()
