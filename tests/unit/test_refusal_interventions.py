"""Refusal interventions on a tiny random model: what the hooks do, and that they go away."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechtests.engine.backend import Backend
from mechtests.methods.interventions import (
    ablate,
    ablation_hooks,
    addition_hooks,
    subtraction_hooks,
)

PROMPTS = ["<user> this statement is TRUE <assistant>", "<user> FALSE : is <assistant>",
           "<user> this is : TRUE statement FALSE <assistant>"]
THREE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """A tiny random llama (read-only: hooks only through the backend's arguments)."""
    from mechtests.engine import load_backend
    from mechtests.engine.tiny import resolve

    path = resolve("llama/base", Path(tmp_path_factory.mktemp("tiny")))
    return load_backend(path, device="cpu", name="tiny/base")


def _direction(d: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_ablate_removes_the_component_along_the_direction() -> None:
    r = _direction(8)
    x = torch.randn(2, 3, 8)
    assert (ablate(x, r) @ r).abs().max().item() < 1e-5


def test_ablation_hooks_cover_three_sites_of_every_layer(backend: Backend) -> None:
    sites = [s for s, _ in ablation_hooks(_direction(backend.d_model), backend.n_layers)]
    assert len(sites) == 3 * backend.n_layers
    assert sites[-1] == f"blocks.{backend.n_layers - 1}.hook_resid_post"


def test_ablation_leaves_no_component_at_any_layer_or_position(backend: Backend) -> None:
    r = _direction(backend.d_model)
    batch = backend.tokenize(PROMPTS)
    sites = [f"blocks.{layer}.{kind}" for layer in range(backend.n_layers) for kind in THREE]
    acts = backend.cache(batch, sites, None, hooks=ablation_hooks(r, backend.n_layers))
    real = batch.attention_mask.bool().cpu()
    for site, act in acts.items():
        assert (act @ r)[real].abs().max().item() < 1e-4, site


def test_addition_at_one_hook_shifts_the_stream_by_c_r(backend: Backend) -> None:
    r, c = _direction(backend.d_model, 1), 2.5
    batch = backend.tokenize(PROMPTS)
    site = "blocks.1.hook_resid_post"
    before = backend.cache(batch, [site], [-1])[site]
    after = backend.cache(batch, [site], [-1],
                          hooks=addition_hooks(r, 1, c, ("hook_resid_post",)))[site]
    assert torch.allclose(after - before, c * r.expand_as(before), atol=1e-5)


def test_subtraction_is_addition_with_the_opposite_sign(backend: Backend) -> None:
    r = _direction(backend.d_model, 2)
    batch = backend.tokenize(PROMPTS)
    site = "blocks.0.hook_resid_pre"
    plus = backend.cache(batch, [site], [-1], hooks=addition_hooks(r, 0, 1.5, THREE))[site]
    minus = backend.cache(batch, [site], [-1], hooks=subtraction_hooks(r, 0, 1.5, THREE))[site]
    assert torch.allclose(plus - minus, 3.0 * r.expand_as(plus), atol=1e-5)


def test_hooks_are_removed_after_a_forward(backend: Backend) -> None:
    batch = backend.tokenize(PROMPTS)
    baseline = backend.forward(batch)
    r = _direction(backend.d_model, 3)
    for hooks in (ablation_hooks(r, backend.n_layers), addition_hooks(r, 0, 8.0, THREE)):
        assert not torch.allclose(backend.forward(batch, hooks), baseline)
        assert torch.equal(backend.forward(batch), baseline)


def test_hooks_are_removed_after_generation(backend: Backend) -> None:
    baseline = backend.generate(PROMPTS, max_new_tokens=6)
    r = _direction(backend.d_model, 4)
    steered = backend.generate(PROMPTS, max_new_tokens=6, hooks=addition_hooks(r, 0, 50.0, THREE))
    assert steered != baseline
    backend.generate(PROMPTS, max_new_tokens=6, hooks=ablation_hooks(r, backend.n_layers))
    assert backend.generate(PROMPTS, max_new_tokens=6) == baseline


def test_batched_generation_with_hooks_equals_one_prompt_at_a_time(backend: Backend) -> None:
    prompts = [*PROMPTS, "<user> TRUE <assistant>", "<user> is is is this statement <assistant>"]
    r = _direction(backend.d_model, 5)
    for hooks in ([], ablation_hooks(r, backend.n_layers), addition_hooks(r, 1, 3.0, THREE)):
        batched = backend.generate(prompts, max_new_tokens=8, hooks=hooks, batch_size=len(prompts))
        single = [backend.generate([p], max_new_tokens=8, hooks=hooks, batch_size=1)[0]
                  for p in prompts]
        assert batched == single


def test_generated_tokens_are_steered_too(backend: Backend) -> None:
    """The decode steps (one new position each) pass through the hooks as well."""
    r = _direction(backend.d_model, 6)
    seen: list[int] = []

    def record(x: torch.Tensor) -> None:
        seen.append(int(x.shape[1]))

    hooks = [*addition_hooks(r, 0, 1.0, THREE), ("blocks.0.hook_resid_pre", record)]
    backend.generate(PROMPTS[:1], max_new_tokens=4, hooks=hooks)
    assert seen[0] > 1
    assert seen[1:] == [1, 1, 1]
