"""Truth steering: add or subtract a direction, read P(TRUE) - P(FALSE), score the flip.

Du et al. 2025 ``Knowledge+Truthfulness/interventions.py``, which extends geometry-of-truth's:

* **Sites**: ``resid_post`` of blocks ``intervene_layer .. probe_layer`` (inclusive) at two
  positions of the few-shot query: the statement's last token (the ".") and the token before.
  The paper writes these as ``-len_suffix`` and ``-len_suffix - 1`` with
  ``len_suffix = len(tokenizer.encode("This statement is:"))``, which counts the BOS token.
  :func:`statement_positions` instead measures how many tokens the question occupies at the
  end of each query (tokenize with and without it); on Llama and Mistral both give the same
  positions, and ours stays right for tokenizers without BOS.
* **Intervention**: ``+ c v`` on false statements, ``- c v`` on true ones (``c = 1``).
* **Readout**: ``P_diff = P(" TRUE") - P(" FALSE")`` at the last position, softmax in float32,
  averaged over statements (batch 16 in the paper).
* **Intervention Effect** (:func:`intervention_effect`), the code's ``nif`` with its default
  branch ``nif=False``::

      IE_T->F = (P_diff(true, subtract) - P_diff(true, none)) / (-1 - P_diff(true, none))
      IE_F->T = (P_diff(false, add) - P_diff(false, none)) / (1 - P_diff(false, none))
      IE      = (IE_T->F + IE_F->T) / 2

  and the normalised branch (``nif=True``, Marks & Tegmark's NIE) with denominators
  ``P_diff(false, none) - P_diff(true, none)`` and its negative.

The paper's "random" direction is unreachable in its code; our random control is a uniformly
random direction scaled to the norm of the real steering vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mechtests.engine.backend import Backend, Hook
from mechtests.methods.stats import bootstrap_interval
from mechtests.phases import PhaseCall, timed_phase

__all__ = [
    "IEResult",
    "SteeringResult",
    "addition_hooks",
    "effect_from_arrays",
    "effect_interval",
    "intervention_effect",
    "p_diff",
    "p_diff_variants",
    "run_steering",
    "statement_positions",
    "steering_sites",
]


@dataclass(frozen=True)
class IEResult:
    """Intervention Effect: both directions of the flip and their average."""

    true_to_false: float
    false_to_true: float

    @property
    def average(self) -> float:
        return (self.true_to_false + self.false_to_true) / 2.0


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


def intervention_effect(
    true_none: float,
    true_subtract: float,
    false_none: float,
    false_add: float,
    normalised: bool = False,
) -> IEResult:
    """The paper's Intervention Effect from four mean ``P_diff`` values (see module doc).

    Example:
        >>> ie = intervention_effect(0.9, -1.0, -0.9, 1.0)
        >>> ie.true_to_false, ie.false_to_true, ie.average
        (1.0, 1.0, 1.0)
    """
    if normalised:
        t2f = _ratio(true_subtract - true_none, false_none - true_none)
        f2t = _ratio(false_add - false_none, true_none - false_none)
    else:
        t2f = _ratio(true_subtract - true_none, -1.0 - true_none)
        f2t = _ratio(false_add - false_none, 1.0 - false_none)
    return IEResult(t2f, f2t)


def effect_from_arrays(
    true_none: np.ndarray,
    true_subtract: np.ndarray,
    false_none: np.ndarray,
    false_add: np.ndarray,
    normalised: bool = False,
) -> IEResult:
    """:func:`intervention_effect` of per-statement ``P_diff`` arrays (means taken here)."""
    return intervention_effect(
        float(np.mean(true_none)), float(np.mean(true_subtract)),
        float(np.mean(false_none)), float(np.mean(false_add)), normalised,
    )


def effect_interval(
    true_none: np.ndarray,
    true_subtract: np.ndarray,
    false_none: np.ndarray,
    false_add: np.ndarray,
    normalised: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the average IE, resampling true and false statements separately
    (each statement keeps its paired none/intervened values)."""

    def stat(i: np.ndarray, j: np.ndarray) -> float:
        return effect_from_arrays(
            true_none[i], true_subtract[i], false_none[j], false_add[j], normalised
        ).average

    return bootstrap_interval(stat, n=(len(true_none), len(false_none)), n_boot=n_boot, seed=seed)


def steering_sites(intervene_layer: int, probe_layer: int) -> list[str]:
    """``blocks.L.hook_resid_post`` for ``L = intervene_layer .. probe_layer`` (inclusive)."""
    if intervene_layer > probe_layer:
        raise ValueError(f"intervene_layer {intervene_layer} > probe_layer {probe_layer}")
    return [f"blocks.{layer}.hook_resid_post" for layer in range(intervene_layer, probe_layer + 1)]


def statement_positions(backend: Backend, queries: Sequence[str], question: str) -> list[int]:
    """The statement's last token and the one before, as negative positions of the queries.

    Every query must end with ``question``; the number of tokens it adds is measured by
    tokenizing each query with and without it, and must be the same for all queries.
    """
    if not queries:
        return [-2, -1]
    stems = []
    for q in queries:
        if not q.endswith(question):
            raise ValueError(f"query does not end with the question {question!r}: {q[-80:]!r}")
        stems.append(q[: len(q) - len(question)])
    full = backend.tokenize(list(queries), add_special_tokens=False).attention_mask.sum(1)
    stem = backend.tokenize(stems, add_special_tokens=False).attention_mask.sum(1)
    lengths = sorted({int(x) for x in (full - stem).tolist()})
    if len(lengths) != 1 or lengths[0] < 1:
        raise ValueError(
            f"the question {question!r} spans {lengths} tokens across queries; expected one "
            "fixed length (the tokenizer merges it with the statement's end)"
        )
    n_q = lengths[0]
    return [-n_q - 2, -n_q - 1]


def addition_hooks(
    sites: Iterable[str], positions: Sequence[int], vector: torch.Tensor, coef: float = 1.0
) -> list[Hook]:
    """Hooks adding ``coef * vector`` at ``positions`` of every site (new tensor, not in place)."""
    pos = list(positions)

    def add(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out[:, pos, :] += (coef * vector).to(device=act.device, dtype=act.dtype)
        return out

    return [(site, add) for site in sites]


def p_diff(
    backend: Backend,
    prompts: Sequence[str],
    true_id: int,
    false_id: int,
    hooks: Sequence[Hook] = (),
    batch_size: int = 16,
) -> np.ndarray:
    """Per-prompt ``P(true_id) - P(false_id)`` at the last position (float32 softmax), float64."""
    return p_diff_variants(backend, prompts, true_id, false_id, [hooks], None, batch_size)[0]


def _p_diff(logits: torch.Tensor, true_id: int, false_id: int) -> np.ndarray:
    probs = logits.to(torch.float32).softmax(-1)
    return (probs[:, true_id] - probs[:, false_id]).to(torch.float64).cpu().numpy()


def p_diff_variants(
    backend: Backend,
    prompts: Sequence[str],
    true_id: int,
    false_id: int,
    variants: Sequence[Sequence[Hook]],
    suffix: int | None,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """:func:`p_diff` under each hook set of ``variants``. With ``suffix`` (the hooks change
    only the last ``suffix`` positions) the backend's ``forward_variants`` runs each batch's
    prompt prefix once for all of them where it can; otherwise (or ``suffix=None``) each
    variant is a plain forward."""
    run = getattr(backend, "forward_variants", None) if suffix is not None else None
    out: list[list[np.ndarray]] = [[] for _ in variants]
    for start in range(0, len(prompts), batch_size):
        batch = backend.tokenize(list(prompts[start : start + batch_size]))
        with torch.no_grad():
            logits = (run(batch, variants, suffix) if run is not None else
                      [backend.forward(batch, hooks, last_only=True)[:, -1] for hooks in variants])
        for acc, lg in zip(out, logits):
            acc.append(_p_diff(lg, true_id, false_id))
    return [np.concatenate(acc) if acc else np.zeros(0) for acc in out]


@dataclass
class SteeringResult:
    """Per-statement ``P_diff`` arrays of one model: the baseline and each vector's flip."""

    true_none: np.ndarray
    false_none: np.ndarray
    true_subtract: dict[str, np.ndarray] = field(default_factory=dict)
    false_add: dict[str, np.ndarray] = field(default_factory=dict)

    def effect(self, vector: str, normalised: bool = False) -> IEResult:
        return effect_from_arrays(
            self.true_none, self.true_subtract[vector], self.false_none, self.false_add[vector],
            normalised,
        )

    def interval(self, vector: str, normalised: bool = False, n_boot: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
        return effect_interval(
            self.true_none, self.true_subtract[vector], self.false_none, self.false_add[vector],
            normalised, n_boot=n_boot, seed=seed,
        )


def _steering_runs(call: PhaseCall, _result: SteeringResult) -> int:
    """Prompt runs of a steering call: every query once plain and once per vector."""
    prompts = len(call.arg("true_queries")) + len(call.arg("false_queries"))
    return prompts * (1 + len(call.arg("vectors")))


@timed_phase("steering", items=_steering_runs)
def run_steering(
    backend: Backend,
    true_queries: Sequence[str],
    false_queries: Sequence[str],
    vectors: Mapping[str, torch.Tensor],
    sites: Sequence[str],
    positions: Sequence[int],
    true_id: int,
    false_id: int,
    coef: float = 1.0,
    batch_size: int = 16,
) -> SteeringResult:
    """Baseline ``P_diff`` and, for every named vector, subtract on true / add on false queries.

    The hooks touch only ``positions`` (negative, from the end), so each batch's prompt prefix
    before the earliest of them runs once for the baseline and every vector
    (:func:`p_diff_variants`)."""
    if not positions or any(p >= 0 for p in positions):
        raise ValueError(f"steering positions must be negative (from the end), got {positions}")
    suffix = max(-p for p in positions)
    names = list(vectors)
    true_runs = p_diff_variants(
        backend, true_queries, true_id, false_id,
        [(), *(addition_hooks(sites, positions, vectors[n], -coef) for n in names)], suffix,
        batch_size,
    )
    false_runs = p_diff_variants(
        backend, false_queries, true_id, false_id,
        [(), *(addition_hooks(sites, positions, vectors[n], coef) for n in names)], suffix,
        batch_size,
    )
    result = SteeringResult(true_none=true_runs[0], false_none=false_runs[0])
    for i, name in enumerate(names, start=1):
        result.true_subtract[name] = true_runs[i]
        result.false_add[name] = false_runs[i]
    return result
