"""Refusal directions: float64 difference of means, degenerate sites, split halves, bootstrap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechtests.methods.refusal import (
    DegenerateDirectionError,
    bootstrap_cosine,
    candidate_directions,
    kl_last,
    mean_difference,
    refusal_direction,
    refusal_logodds,
    split_half_directions,
)


def _acts(n: int, shift: float, seed: int, d: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    x[:, 0] += shift
    return x


def test_mean_difference_is_float64_harmful_minus_harmless() -> None:
    harmful = torch.tensor([[2.0, 0.0], [4.0, 0.0]], dtype=torch.float32)
    harmless = torch.tensor([[0.0, 1.0]], dtype=torch.float32)
    diff = mean_difference(harmful, harmless)
    assert diff.dtype == torch.float64
    assert diff.tolist() == [3.0, -1.0]


def test_refusal_direction_is_unit_and_points_from_harmless_to_harmful() -> None:
    r = refusal_direction(_acts(64, 5.0, 0), _acts(64, 0.0, 1))
    assert r.norm().item() == pytest.approx(1.0)
    assert r[0].item() > 0.9


def test_coinciding_means_raise_instead_of_nan() -> None:
    same = torch.ones(4, 8)
    with pytest.raises(DegenerateDirectionError, match="coincide"):
        refusal_direction(same, same.clone(), where="blocks.0.hook_resid_pre")


def test_candidate_sweep_skips_sites_where_means_coincide() -> None:
    shared_token = torch.ones(8, 2, 4)  # layer 0: the same embedding for every prompt
    harmful = {0: shared_token, 1: torch.randn(8, 2, 4) + 3.0}
    harmless = {0: shared_token.clone(), 1: torch.randn(8, 2, 4)}
    found, skipped = candidate_directions(harmful, harmless, [-2, -1])
    assert skipped == [(0, -2), (0, -1)]
    assert sorted(found) == [(1, -2), (1, -1)]
    assert all(torch.isfinite(v).all() for v in found.values())


def test_split_halves_of_a_strong_direction_agree() -> None:
    a, b = split_half_directions(_acts(64, 4.0, 2), _acts(64, 0.0, 3))
    assert float(a @ b) > 0.9


def test_bootstrap_cosine_interval_brackets_the_cosine_of_shared_directions() -> None:
    first = (_acts(48, 3.0, 4), _acts(48, 0.0, 5))
    second = (_acts(48, 3.0, 6), _acts(48, 0.0, 7))
    lo, hi = bootstrap_cosine(first, second, n_boot=200)
    cos = float(refusal_direction(*first) @ refusal_direction(*second))
    assert lo <= cos <= hi
    assert lo > 0.5


def test_refusal_logodds_and_kl_use_the_last_position_distribution() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    expected = torch.log(torch.tensor(1 / 3)).item()  # p = 1/4: log(p / (1 - p))
    assert refusal_logodds(logits, [0]).item() == pytest.approx(expected, abs=1e-6)
    assert kl_last(logits, logits).item() == pytest.approx(0.0, abs=1e-9)
    assert kl_last(logits, torch.tensor([[5.0, 0.0, 0.0, 0.0]])).item() > 0.1


def test_sweep_logits_come_back_in_prompt_order_whatever_the_length_batches(
    tmp_path: Path,
) -> None:
    from mechtests.engine import load_backend
    from mechtests.engine.tiny import resolve
    from mechtests.methods.refusal import _last_logits, _length_batches

    backend = load_backend(resolve("llama/instruct", tmp_path), device="cpu")
    prompts = [" ".join(["word"] * n) for n in (9, 2, 5, 1, 7, 3, 12, 4, 6, 2, 8)]
    batches = _length_batches(backend, prompts, batch_size=32)
    assert len(batches) == 2  # sorted by length, 8 per forward
    lengths = [int(rows.batch.attention_mask.sum(1).max()) for rows in batches]
    assert lengths == sorted(lengths)
    got = _last_logits(backend, batches, ())
    want = torch.cat([backend.forward(backend.tokenize([p]), last_only=True)[:, -1]
                      for p in prompts])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
