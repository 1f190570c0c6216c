"""Truth steering: hooks, positions, P_diff and the Intervention Effect (paper code
Knowledge+Truthfulness/interventions.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from mechtests.engine.backend import Batch, Hook
from mechtests.methods.steering import (
    addition_hooks,
    effect_from_arrays,
    effect_interval,
    intervention_effect,
    p_diff,
    run_steering,
    statement_positions,
    steering_sites,
)

SHARED = Path(__file__).parents[2] / ".." / "shared"
RECORD = SHARED / "datasets" / "du2025_outputs" / "label_change_intervention_results.json"


class WordBackend:
    """A one-site fake model: whitespace tokens, embedding sum -> TRUE/FALSE logits."""

    name = "fake"
    n_layers = 1
    d_model = 4
    device = torch.device("cpu")
    dtype = torch.float32
    tokenizer = None
    SITE = "blocks.0.hook_resid_post"

    def __init__(self) -> None:
        self.vocab = {"<pad>": 0, "<bos>": 1, "TRUE": 2, "FALSE": 3}
        self.truth = torch.tensor([1.0, 0.0, 0.0, 0.0])

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab))

    def tokenize(self, prompts: Sequence[str], add_special_tokens: bool = True) -> Batch:
        rows = [([1] if add_special_tokens else []) + [self._id(w) for w in p.split()]
                for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return Batch(ids, mask)

    def embed(self, token: int) -> torch.Tensor:
        word = next(w for w, i in self.vocab.items() if i == token)
        sign = {"yes": 1.0, "no": -1.0}.get(word, 0.0)
        return sign * self.truth + 0.01 * torch.tensor([0.0, 1.0, 0.0, 0.0]) * token

    def forward(self, batch: Batch, hooks: Sequence[Hook] = (),
                last_only: bool = False) -> torch.Tensor:
        act = torch.stack([torch.stack([self.embed(int(t)) for t in row])
                           for row in batch.input_ids]) * batch.attention_mask[..., None]
        for site, fn in hooks:
            assert site == self.SITE
            new = fn(act)
            act = act if new is None else new
        score = 10.0 * (act.sum(1) @ self.truth)  # [batch]
        logits = torch.zeros(batch.size, act.shape[1], len(self.vocab) + 8)
        logits[:, -1, 2] = score
        logits[:, -1, 3] = -score
        return logits


def test_default_branch_scores_a_complete_flip_as_one_and_no_change_as_zero() -> None:
    assert intervention_effect(0.9, -1.0, -0.8, 1.0).average == pytest.approx(1.0)
    none = intervention_effect(0.9, 0.9, -0.8, -0.8)
    assert (none.true_to_false, none.false_to_true, none.average) == (0.0, 0.0, 0.0)


def test_normalised_branch_divides_by_the_gap_between_true_and_false_baselines() -> None:
    ie = intervention_effect(0.5, -0.5, -0.5, 0.5, normalised=True)
    assert (ie.true_to_false, ie.false_to_true) == (pytest.approx(1.0), pytest.approx(1.0))
    default = intervention_effect(0.5, -0.5, -0.5, 0.5)
    assert default.true_to_false == pytest.approx(1.0 / 1.5)


def test_zero_denominator_gives_nan_not_an_exception() -> None:
    assert math.isnan(intervention_effect(-1.0, -1.0, 0.0, 0.5).true_to_false)


@pytest.mark.paper_data("du2025_outputs/label_change_intervention_results.json")
def test_intervention_effect_reproduces_the_paper_codes_stored_record() -> None:
    """Our IE on the paper's Llama-3.1-8B run (the paper repository's
    label_change_intervention_results.json).

    The record stores baselines and effects; inverting our default-branch formula must give
    post-intervention P_diff values on the bf16 grid (multiples of 1/256), and those values must
    give back every stored effect and average.
    """
    record = json.loads(RECORD.read_text())[0]
    grid = 256.0
    for model in ("m1", "m2"):
        for label in ("true", "false"):
            base = record[f"p_diff_{model}_{label}_base"]
            assert base * grid == pytest.approx(round(base * grid), abs=1e-9)
    for direction, model in (("m1", "m1"), ("m2", "m1"), ("m1", "m2"), ("m2", "m2")):
        t0, f0 = record[f"p_diff_{model}_true_base"], record[f"p_diff_{model}_false_base"]
        t2f = record[f"nif_{direction}_{model}_true_false"]
        f2t = record[f"nif_{direction}_{model}_false_true"]
        t1 = t0 + t2f * (-1.0 - t0)
        f1 = f0 + f2t * (1.0 - f0)
        assert t1 * grid == pytest.approx(round(t1 * grid), abs=1e-6)
        assert f1 * grid == pytest.approx(round(f1 * grid), abs=1e-6)
        ie = intervention_effect(t0, round(t1 * grid) / grid, f0, round(f1 * grid) / grid)
        assert ie.true_to_false == pytest.approx(t2f, abs=1e-12)
        assert ie.false_to_true == pytest.approx(f2t, abs=1e-12)
        assert ie.average == pytest.approx(record[f"avg_nif_{direction}_{model}"], abs=1e-12)
    # the paper repository's label_change_intervention_results.json: forward transfer slightly
    # beats the instruct model's own direction
    assert record["avg_nif_m1_m2"] / record["avg_nif_m2_m2"] == pytest.approx(1.021, abs=1e-3)


def test_effect_from_arrays_takes_means_and_its_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    tn, fn = rng.uniform(0.5, 1, 60), rng.uniform(-1, -0.5, 40)
    ts, fa = tn - rng.uniform(0.5, 1.5, 60), fn + rng.uniform(0.5, 1.5, 40)
    ie = effect_from_arrays(tn, ts, fn, fa)
    assert ie == intervention_effect(tn.mean(), ts.mean(), fn.mean(), fa.mean())
    lo, hi = effect_interval(tn, ts, fn, fa, n_boot=300)
    assert lo < ie.average < hi


def test_steering_sites_span_intervene_to_probe_layer_inclusive() -> None:
    assert steering_sites(8, 12) == [f"blocks.{layer}.hook_resid_post" for layer in range(8, 13)]
    with pytest.raises(ValueError):
        steering_sites(3, 2)


def test_addition_hooks_add_only_at_the_given_positions_and_do_not_mutate() -> None:
    act = torch.zeros(2, 6, 3)
    hooks = addition_hooks(["a", "b"], [-3, -2], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
                           coef=-2.0)
    assert [site for site, _ in hooks] == ["a", "b"]
    out = hooks[0][1](act)
    assert out is not None
    assert torch.equal(act, torch.zeros(2, 6, 3))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, [3, 4]], torch.tensor([-2.0, -4.0, -6.0]).expand(2, 2, 3))
    assert out[:, [0, 1, 2, 5]].abs().sum() == 0


def test_statement_positions_point_at_the_period_and_the_token_before() -> None:
    backend = WordBackend()
    queries = ["x TRUE\nthe sky is blue . this statement is :", "a b c . this statement is :"]
    positions = statement_positions(backend, queries, " this statement is :")
    assert positions == [-6, -5]
    ids = backend.tokenize(queries[1:]).input_ids[0]
    inverse = {i: w for w, i in backend.vocab.items()}
    assert [inverse[int(ids[p])] for p in positions] == ["c", "."]


def test_statement_positions_reject_queries_without_the_question() -> None:
    with pytest.raises(ValueError, match="does not end"):
        statement_positions(WordBackend(), ["a . no question"], " this statement is :")


def test_p_diff_reads_true_minus_false_probability_at_the_last_token() -> None:
    backend = WordBackend()
    values = p_diff(backend, ["yes .", "no .", "maybe ."], 2, 3, batch_size=2)
    assert values.dtype == np.float64
    assert values[0] > 0.9
    assert values[1] < -0.9
    assert values[2] == pytest.approx(0.0, abs=1e-6)


def test_run_steering_flips_with_the_truth_direction_but_not_with_an_orthogonal_one() -> None:
    backend = WordBackend()
    true_q = ["yes a . q :", "yes b . q :"]
    false_q = ["no a . q :", "no b . q :", "no c . q :"]
    positions = statement_positions(backend, true_q + false_q, " q :")
    vectors = {"truth": 2.0 * backend.truth, "ortho": torch.tensor([0.0, 0.0, 2.0, 0.0])}
    result = run_steering(backend, true_q, false_q, vectors, [WordBackend.SITE], positions, 2, 3)
    assert result.true_none.shape == (2,)
    assert result.false_none.shape == (3,)
    assert result.effect("truth").average > 0.9
    assert result.effect("ortho").average == pytest.approx(0.0, abs=1e-6)
    lo, hi = result.interval("truth", n_boot=50)
    assert lo <= result.effect("truth").average <= hi


def test_run_steering_on_a_real_model_equals_one_p_diff_per_vector(tmp_path: Path) -> None:
    """The prefix-once path (hooks backend, KV cache) gives the per-vector P_diff exactly as
    a plain forward per vector does."""
    from mechtests.engine import load_backend
    from mechtests.engine.tiny import resolve

    backend = load_backend(resolve("llama/sft", tmp_path), device="cpu", backend="hf")
    true_q = ["Paris is in France . this statement is :", "The sky is blue . this statement is :"]
    false_q = ["Paris is in Peru . this statement is :", "The ."]
    sites = steering_sites(0, backend.n_layers - 1)
    gen = torch.Generator().manual_seed(0)
    vectors = {"a": 10 * torch.randn(backend.d_model, generator=gen),
               "b": 30 * torch.randn(backend.d_model, generator=gen)}
    t_id, f_id = backend.token_id(" TRUE"), backend.token_id(" FALSE")
    result = run_steering(backend, true_q, false_q, vectors, sites, [-3, -2], t_id, f_id,
                          batch_size=2)
    close = {"rtol": 1e-4, "atol": 1e-9}  # P_diff of a random tiny model is ~1e-4
    np.testing.assert_allclose(result.true_none, p_diff(backend, true_q, t_id, f_id), **close)
    for name, v in vectors.items():
        sub = p_diff(backend, true_q, t_id, f_id, addition_hooks(sites, [-3, -2], v, -1.0))
        add = p_diff(backend, false_q, t_id, f_id, addition_hooks(sites, [-3, -2], v, 1.0))
        np.testing.assert_allclose(result.true_subtract[name], sub, **close)
        np.testing.assert_allclose(result.false_add[name], add, **close)
    change = np.abs(result.false_add["b"] - result.false_none) / np.abs(result.false_none)
    assert change.max() > 0.05  # the vectors act
