"""Refusal directions: difference in means, split halves, bootstrap cosines, Arditi-style selection.

Du et al. 2025 (paper code ``Refusal/extract_refusal_dir.py``) define a model's refusal
direction at a hand-picked residual-stream site (``resid_pre`` of block ``L``, one template
position ``p``) as ``r = mean(x | harmful) - mean(x | harmless)`` over 128 training instructions
of each kind, and use the unit vector ``r / |r|``. Means are accumulated in float64
(refusal_direction's habit "to avoid numerical issues").

Arditi et al. 2024 (andyrdt/refusal_direction, ``pipeline/submodules/select_direction.py``)
instead sweep
every layer and every end-of-instruction position, and keep the candidate whose directional
ablation lowers the refusal log-odds on harmful prompts most, among candidates that (a) come from
the first 80% of layers, (b) change the next-token distribution on harmless prompts by a KL of at
most 0.1 when ablated, and (c) raise the refusal log-odds above 0 when added (coefficient 1,
unnormalised) on harmless prompts. :func:`select_direction` implements that sweep; Du et al. do
not use it, so it only reports which site the sweep would have chosen.

Sites where the harmful and harmless means coincide (e.g. the embedding of a template token
shared by every prompt: the difference is exactly zero) have no direction; they are skipped,
never normalised into NaN.

Example:
    >>> harmful = torch.tensor([[2.0, 0.0], [4.0, 0.0]])
    >>> harmless = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    >>> unit(mean_difference(harmful, harmless)).tolist()  # doctest: +ELLIPSIS
    [0.948..., -0.316...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechtests.methods.directions import cosine
from mechtests.methods.stats import bootstrap_interval
from mechtests.phases import timed_phase

if TYPE_CHECKING:
    from mechtests.engine.backend import Backend, Batch, Hook

__all__ = [
    "Candidate",
    "DegenerateDirectionError",
    "Selection",
    "bootstrap_cosine",
    "candidate_directions",
    "cosine",
    "kl_last",
    "mean_difference",
    "means_coincide",
    "refusal_direction",
    "refusal_logodds",
    "select_direction",
    "split_half_directions",
    "unit",
]

_COINCIDE_RTOL = 1e-6


class DegenerateDirectionError(ValueError):
    """The harmful and harmless means coincide at the requested site: there is no direction."""


def mean_difference(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """``mean(harmful) - mean(harmless)`` over the first axis, in float64 (``[..., d]``)."""
    if harmful.shape[0] == 0 or harmless.shape[0] == 0:
        raise ValueError("mean_difference needs at least one harmful and one harmless example")
    diff = harmful.to(torch.float64).mean(0) - harmless.to(torch.float64).mean(0)
    if bool(torch.isnan(diff).any()):
        raise ValueError("difference of means contains NaN (NaN activations?)")
    return diff


def means_coincide(harmful: torch.Tensor, harmless: torch.Tensor) -> bool:
    """Whether the two float64 means are equal up to ``1e-6`` of their norm (no direction)."""
    a = harmful.to(torch.float64).mean(0)
    b = harmless.to(torch.float64).mean(0)
    scale = float(a.norm() + b.norm())
    return float((a - b).norm()) <= _COINCIDE_RTOL * max(scale, 1e-30)


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector / |vector|`` in float64."""
    v = vector.to(torch.float64)
    norm = v.norm()
    if float(norm) == 0.0:
        raise DegenerateDirectionError("cannot normalise a zero vector")
    return v / norm


def refusal_direction(
    harmful: torch.Tensor, harmless: torch.Tensor, where: str = ""
) -> torch.Tensor:
    """The unit refusal direction (float64 ``[d]``) from ``[n, d]`` activations at one site.

    Raises :class:`DegenerateDirectionError` when the two means coincide there.
    """
    if means_coincide(harmful, harmless):
        raise DegenerateDirectionError(
            f"harmful and harmless means coincide{' at ' + where if where else ''}: no refusal "
            "direction. Fix: choose a later layer or a position inside the instruction."
        )
    return unit(mean_difference(harmful, harmless))


def split_half_directions(
    harmful: torch.Tensor, harmless: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit directions from two disjoint random halves of the prompts (a noise ceiling)."""
    rng = np.random.default_rng(seed)
    ph, pl = rng.permutation(harmful.shape[0]), rng.permutation(harmless.shape[0])
    h1, h2 = ph[: len(ph) // 2], ph[len(ph) // 2 :]
    l1, l2 = pl[: len(pl) // 2], pl[len(pl) // 2 :]
    if min(len(h1), len(l1)) == 0:
        raise ValueError("split_half_directions needs at least two prompts of each kind")
    first = refusal_direction(harmful[torch.as_tensor(h1)], harmless[torch.as_tensor(l1)])
    second = refusal_direction(harmful[torch.as_tensor(h2)], harmless[torch.as_tensor(l2)])
    return first, second


def bootstrap_cosine(
    first: tuple[torch.Tensor, torch.Tensor],
    second: tuple[torch.Tensor, torch.Tensor],
    n_boot: int = 1000,
    seed: int = 0,
    method: str = "basic",
) -> tuple[float, float]:
    """Bootstrap interval of ``cos(r_first, r_second)``, resampling prompts.

    ``first`` and ``second`` are ``(harmful [n, d], harmless [m, d])`` of two models on the *same*
    prompts, so one resample of harmful and one of harmless indices is applied to both. The
    ``basic`` (reflected) interval is the default: sampling noise shared by the two models biases
    the resampled cosines, and reflecting around the point estimate removes that bias.
    """
    fh, fl = (t.to(torch.float64) for t in first)
    sh, sl = (t.to(torch.float64) for t in second)

    def stat(i: np.ndarray, j: np.ndarray) -> float:
        ii, jj = torch.as_tensor(i), torch.as_tensor(j)
        a = fh[ii].mean(0) - fl[jj].mean(0)
        b = sh[ii].mean(0) - sl[jj].mean(0)
        denom = float(a.norm() * b.norm())
        return float(a @ b) / denom if denom > 0 else float("nan")

    return bootstrap_interval(stat, n_boot=n_boot, seed=seed, n=(fh.shape[0], fl.shape[0]),
                              method=method)


def candidate_directions(
    harmful: Mapping[int, torch.Tensor],
    harmless: Mapping[int, torch.Tensor],
    positions: Sequence[int],
) -> tuple[dict[tuple[int, int], torch.Tensor], list[tuple[int, int]]]:
    """Unnormalised float64 difference of means per ``(layer, position)``, and the skipped sites.

    ``harmful[layer]`` / ``harmless[layer]`` are ``[n, len(positions), d]`` activations at the
    input of block ``layer``. Sites whose means coincide are returned in the skipped list.
    """
    out: dict[tuple[int, int], torch.Tensor] = {}
    skipped: list[tuple[int, int]] = []
    for layer in sorted(harmful):
        for k, pos in enumerate(positions):
            h, l_ = harmful[layer][:, k], harmless[layer][:, k]
            if means_coincide(h, l_):
                skipped.append((layer, pos))
                continue
            out[(layer, pos)] = mean_difference(h, l_)
    return out, skipped


# -- Arditi et al.'s selection sweep ---------------------------------------------------------


def refusal_logodds(last_logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """``log P(refusal tokens) - log(1 - P(refusal tokens))`` per row (float64, eps 1e-8)."""
    probs = last_logits.to(torch.float64).softmax(-1)
    p = probs[:, list(token_ids)].sum(-1)
    return torch.log(p + 1e-8) - torch.log(1.0 - p + 1e-8)


def kl_last(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(reference) || softmax(other))`` per row, float64 (Arditi's ``kl_div_fn``)."""
    pa = reference.to(torch.float64).softmax(-1)
    pb = other.to(torch.float64).softmax(-1)
    return (pa * (torch.log(pa + 1e-6) - torch.log(pb + 1e-6))).sum(-1)


@dataclass(frozen=True)
class Candidate:
    """Scores of one candidate site in the sweep."""

    layer: int
    position: int
    ablation_score: float  # mean refusal log-odds on harmful prompts with the direction ablated
    steering_score: float  # mean refusal log-odds on harmless prompts with the direction added
    kl: float  # mean KL on harmless prompts, ablated vs not
    kept: bool
    reason: str = ""


@dataclass(frozen=True)
class Selection:
    """The sweep's choice and every candidate's scores."""

    layer: int | None
    position: int | None
    direction: torch.Tensor | None  # unnormalised float64 difference of means
    candidates: tuple[Candidate, ...]
    baseline_harmful: float
    baseline_harmless: float
    skipped: tuple[tuple[int, int], ...] = field(default_factory=tuple)


LENGTH_BATCH = 8
"""Prompts per forward in the selection sweep: sorted by length, so a batch pads little (the
sweep's prompts vary 2x in length; one batch of 32 spent a third of its tokens on padding)."""


@dataclass(frozen=True)
class _Rows:
    """A tokenized batch and the indices of its prompts in the caller's list."""

    batch: Batch
    index: list[int]


def _length_batches(backend: Backend, prompts: Sequence[str], batch_size: int) -> list[_Rows]:
    """``prompts`` tokenized in batches of similar length, in sorted order (see
    :func:`_last_logits` for the order back); each row's logits do not depend on its batch
    (left padding with position ids), up to float rounding."""
    lengths = [len(ids) for ids in backend.tokenizer(list(prompts))["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    size = max(1, min(batch_size, LENGTH_BATCH))
    return [_Rows(backend.tokenize([prompts[i] for i in order[k : k + size]]),
                  order[k : k + size]) for k in range(0, len(order), size)]


def _last_logits(backend: Backend, batches: Sequence[_Rows],
                 hooks: Sequence[Hook]) -> torch.Tensor:
    """Last-position float32 logits of every prompt of ``batches``, in the original order."""
    parts, index = [], []
    for rows in batches:
        parts.append(backend.forward(rows.batch, hooks, last_only=True)[:, -1, :].float().cpu())
        index.extend(rows.index)
    out = torch.cat(parts)
    return out[torch.as_tensor(index).argsort()]


@timed_phase("direction selection", items=lambda call, _best: len(call.arg("candidates")))
def select_direction(
    backend: Backend,
    harmful_prompts: Sequence[str],
    harmless_prompts: Sequence[str],
    candidates: Mapping[tuple[int, int], torch.Tensor],
    refusal_token_ids: Sequence[int],
    *,
    kl_threshold: float,
    induce_threshold: float,
    prune_layer_fraction: float,
    batch_size: int = 32,
    skipped: Sequence[tuple[int, int]] = (),
) -> Selection:
    """Arditi et al.'s selection over ``candidates`` (see the module docstring).

    Ablation uses the unit direction at every layer's ``resid_pre``, ``resid_mid`` and
    ``resid_post`` (equivalent to Arditi's block inputs plus attention and MLP outputs);
    activation addition adds the unnormalised difference of means (coefficient 1) at the
    candidate layer's ``resid_pre``. No candidate surviving the filters gives ``layer=None``.
    """
    from mechtests.methods.interventions import ablation_hooks, addition_hooks

    harmful = _length_batches(backend, harmful_prompts, batch_size)
    harmless = _length_batches(backend, harmless_prompts, batch_size)
    base_harmful = refusal_logodds(_last_logits(backend, harmful, ()), refusal_token_ids)
    base_harmless_logits = _last_logits(backend, harmless, ())
    base_harmless = refusal_logodds(base_harmless_logits, refusal_token_ids)
    n_layers = backend.n_layers
    limit = int(n_layers * (1.0 - prune_layer_fraction))
    scored: list[Candidate] = []
    for (layer, pos), diff in sorted(candidates.items()):
        ablate = ablation_hooks(unit(diff), n_layers)
        kl = float(kl_last(base_harmless_logits,
                           _last_logits(backend, harmless, ablate)).mean())
        abl = float(refusal_logodds(_last_logits(backend, harmful, ablate),
                                    refusal_token_ids).mean())
        add = addition_hooks(diff, layer, 1.0, ("hook_resid_pre",), normalise=False)
        steer = float(refusal_logodds(_last_logits(backend, harmless, add),
                                      refusal_token_ids).mean())
        reasons = []
        if any(np.isnan(x) for x in (kl, abl, steer)):
            reasons.append("NaN score")
        if layer >= limit:
            reasons.append(f"layer in the last {prune_layer_fraction:.0%}")
        if kl > kl_threshold:
            reasons.append(f"KL {kl:.3g} > {kl_threshold}")
        if steer < induce_threshold:
            reasons.append(f"steering {steer:.3g} < {induce_threshold}")
        scored.append(Candidate(layer, pos, abl, steer, kl, not reasons, "; ".join(reasons)))
    kept = [c for c in scored if c.kept]
    best = min(kept, key=lambda c: c.ablation_score) if kept else None
    return Selection(
        layer=best.layer if best else None,
        position=best.position if best else None,
        direction=candidates[(best.layer, best.position)] if best else None,
        candidates=tuple(scored),
        baseline_harmful=float(base_harmful.mean()),
        baseline_harmless=float(base_harmless.mean()),
        skipped=tuple(skipped),
    )
