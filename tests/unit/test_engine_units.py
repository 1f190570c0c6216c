"""Engine pieces that need no model: the architecture table, option checks, progress bars,
collection batching and the tiny vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from mechtests.engine import load_backend
from mechtests.engine.archs import ARCH_SPECS, arch_spec
from mechtests.engine.backend import Batch, Hook
from mechtests.engine.collect import collect_activations, progress_enabled
from mechtests.engine.hf_common import apply_fns
from mechtests.engine.tiny import (
    ARCHS,
    REQUIRED_WORDS,
    SPECIALS,
    build_vocab,
    model_type,
    resolve,
)
from mechtests.errors import CheckpointError, ConfigError, SiteError


def test_every_tiny_architecture_has_a_site_table() -> None:
    assert {model_type(arch) for arch in ARCHS} <= set(ARCH_SPECS)
    assert arch_spec("gemma2").norm_offset == 1.0
    assert arch_spec("llama").norm_offset == 0.0


def test_unknown_architecture_is_a_checkpoint_error_listing_the_known_ones() -> None:
    with pytest.raises(CheckpointError, match="gemma2, gemma3_text, llama, mistral, qwen2, qwen3"):
        arch_spec("gpt2")


def test_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="transformer-lens"):
        load_backend(tmp_path, backend="nnsight")


def test_unknown_dtype_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bfloat16"):
        load_backend(tmp_path, dtype="fp8")


def test_directory_without_config_is_a_checkpoint_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_backend(tmp_path)


def test_broken_checkpoint_is_a_checkpoint_error_with_a_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match=r"Fix: re-save it"):
        load_backend(tmp_path, device="cpu")


@pytest.mark.parametrize(
    ("progress", "env", "expected"),
    [(False, {}, False), (True, {"CI": "1"}, False), (True, {"PYTEST_XDIST_WORKER": "gw0"}, False)],
)
def test_progress_bar_is_off_when_not_wanted(
    monkeypatch: pytest.MonkeyPatch, progress: bool, env: dict[str, str], expected: bool
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert progress_enabled(progress) is expected


def test_hook_returning_a_wrong_shape_is_a_site_error() -> None:
    with pytest.raises(SiteError, match=r"returned shape \(2, 3\)"):
        apply_fns([lambda x: torch.zeros(2, 3)], torch.zeros(2, 4), "blocks.0.hook_resid_pre")


def test_hooks_apply_in_order_and_none_keeps_the_value() -> None:
    act = torch.ones(1, 2, 3)
    out = apply_fns([lambda x: x * 2, lambda x: None, lambda x: x + 1], act, "s")
    assert torch.equal(out, torch.full((1, 2, 3), 3.0))


class _FakeBackend:
    """Returns each prompt's length as its activation; records the batch sizes it saw."""

    name = "fake"
    n_layers = 1
    d_model = 2

    def __init__(self) -> None:
        self.batches: list[int] = []

    def tokenize(self, prompts: Sequence[str], add_special_tokens: bool = True) -> Batch:
        ids = torch.tensor([[len(p)] for p in prompts])
        return Batch(ids, torch.ones_like(ids))

    def cache(
        self, batch: Batch, sites: Sequence[str], positions: Sequence[int] | None = None,
        hooks: Sequence[Hook] = (),
    ) -> dict[str, torch.Tensor]:
        self.batches.append(batch.size)
        n_pos = len(positions or [])
        acts = batch.input_ids.float()[:, :1, None].expand(-1, n_pos, self.d_model)
        return {site: acts.clone() for site in sites}


def test_collect_batches_prompts_and_keeps_their_order() -> None:
    backend = _FakeBackend()
    prompts = ["a" * n for n in range(1, 8)]
    acts = collect_activations(
        backend, prompts, ["blocks.0.hook_resid_post"], [-1], batch_size=3,  # type: ignore[arg-type]
        progress=False,
    )
    assert backend.batches == [3, 3, 1]
    got = acts["blocks.0.hook_resid_post"]
    assert got.shape == (7, 1, 2)
    assert got[:, 0, 0].tolist() == [float(n) for n in range(1, 8)]


def test_tiny_vocab_starts_with_specials_and_holds_the_readout_words() -> None:
    vocab = build_vocab()
    assert tuple(vocab[: len(SPECIALS)]) == SPECIALS
    assert set(REQUIRED_WORDS) <= set(vocab)
    assert len(vocab) == len(set(vocab))
    assert vocab[len(SPECIALS):] == sorted(vocab[len(SPECIALS):])


@pytest.mark.parametrize("ref", ["llama", "llama/", "gpt2/base", "llama/chat", "llama/base/x"])
def test_malformed_tiny_reference_is_a_checkpoint_error(ref: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="tiny:<arch>/<role>"):
        resolve(ref, tmp_path)


def test_release_drops_the_model_and_collects_only_for_large_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from mechtests.engine import hf_common

    calls: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or 0)
    small = load_backend(resolve("llama/sft", tmp_path), device="cpu")
    small.release()
    assert small.model is None
    assert calls == []  # a tiny CPU model: refcounting frees it
    small.release()  # twice is harmless
    monkeypatch.setattr(hf_common, "COLLECT_BYTES", 1)
    large = load_backend(resolve("llama/sft", tmp_path), device="cpu")
    large.release()
    assert large.model is None
    assert calls == [1]
