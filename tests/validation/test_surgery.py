"""Weight surgery on a tiny random Llama checkpoint: the mutants are what they claim to be."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechtests.engine.tiny import resolve
from mechtests.families import load_families
from mechtests.validation import surgery
from mechtests.validation.mutants import build_mutant


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("validation-cache")


@pytest.fixture(scope="module")
def base(cache: Path) -> Path:
    return resolve("llama/base", cache)


def _direction(width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


def test_after_projecting_out_a_direction_no_residual_writer_has_a_component_along_it(
    base: Path,
) -> None:
    state = surgery.load_state(base)
    d = _direction(state[surgery.EMBED].shape[1])
    out = surgery.project_out_writers(state, d, n_layers=2)
    unit = d / d.norm()
    writers = surgery.writer_names(out)
    assert len(writers) == 1 + 2 * 2  # embedding, o_proj and down_proj of both layers
    for name in writers:
        along = out[name] @ unit if name == surgery.EMBED else unit @ out[name]
        before = state[name] @ unit if name == surgery.EMBED else unit @ state[name]
        assert along.abs().max() < 1e-5 * before.abs().max(), name
    untouched = [n for n in state if n not in writers]
    assert untouched
    assert all(torch.equal(out[n], state[n]) for n in untouched)


def test_a_projected_model_has_no_residual_component_along_the_direction_at_any_layer(
    base: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    d = _direction(model.config.hidden_size, seed=1)
    state = surgery.project_out_writers(surgery.load_state(base), d, n_layers=2)
    model.load_state_dict(state, strict=False)
    ids = torch.tensor([[2, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[:-1]  # before the final norm
    unit = d / d.norm()
    for layer, h in enumerate(hidden):
        assert (h @ unit).abs().max() < 1e-4 * h.norm(dim=-1).max(), layer


def test_zeroing_neurons_zeroes_their_output_columns_and_nothing_else(base: Path) -> None:
    state = surgery.load_state(base)
    out = surgery.zero_neurons(state, layer=1, neurons=[3, 7])
    name = surgery.down_proj_name(1)
    assert out[name][:, [3, 7]].abs().sum() == 0
    keep = [i for i in range(out[name].shape[1]) if i not in (3, 7)]
    assert torch.equal(out[name][:, keep], state[name][:, keep])
    assert torch.equal(state[name][:, 3], surgery.load_state(base)[name][:, 3])  # a copy


def test_scaling_neurons_multiplies_their_output_columns_only(base: Path) -> None:
    state = surgery.load_state(base)
    out = surgery.scale_neurons(state, layer=0, neurons=[5], factor=2.0)
    name = surgery.down_proj_name(0)
    assert torch.equal(out[name][:, 5], 2.0 * state[name][:, 5])
    assert torch.equal(out[name][:, 6:], state[name][:, 6:])


def test_the_identity_mutant_equals_the_base_bitwise(cache: Path, base: Path) -> None:
    mutant = build_mutant(load_families()["tiny"], "identity", cache)
    for path in base.iterdir():
        if path.is_file() and not path.name.startswith("."):
            assert (mutant / path.name).read_bytes() == path.read_bytes(), path.name
    assert (mutant / ".mutant.json").is_file()


def test_a_built_mutant_is_reused_from_the_cache(cache: Path) -> None:
    family = load_families()["tiny"]
    first = build_mutant(family, "entropy_neurons_zeroed", cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_mutant(family, "entropy_neurons_zeroed", cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    zeroed = surgery.load_state(first)[surgery.down_proj_name(1)]
    assert int((zeroed.abs().sum(0) == 0).sum()) == 10  # the overlap claim's k


def test_save_like_keeps_the_source_file_layout(base: Path, tmp_path: Path) -> None:
    state = surgery.load_state(base)
    surgery.save_like(base, tmp_path / "copy", state)
    names = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert names == sorted(p.name for p in base.iterdir() if not p.name.startswith("."))
    again = surgery.load_state(tmp_path / "copy")
    assert all(torch.equal(again[n], state[n]) for n in state)


def test_surgery_on_a_gemma2_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    from mechtests.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"not supported.*Fix: ") as info:
        surgery.check_supported({"model_type": "gemma2"}, tmp_path)
    assert "\n" not in str(info.value)
