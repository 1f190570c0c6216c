"""Entropy neurons: final-layer MLP neurons with a large output norm and a flat logit effect.

Du et al. 2025 (paper code Confidence/IoU.py, code ``Confidence/IoU.py:process_model,
filter_neurons``), after
Stolfo et al. 2024 (bpwu1/confidence-regulation-neurons, ``plot_generation/fig1.py``). For each
neuron ``i`` of the
last MLP, with output weight ``w_i`` (a column of HF ``down_proj.weight``, ``[d_model]``)::

    norm_i      = |w_i|
    cos_{i,v}   = <w_i, u_v> / (|w_i| |u_v|)      u_v: column v of the unembedding W_U [d, vocab]
    LogitVar_i  = Var_v(cos_{i,v})                 (unbiased, over the whole vocabulary)

Selection: the neurons with ``norm_i > quantile_{1 - norm_top}(norm)`` (strict; pandas/torch
linear-interpolated quantile), then the ``k`` with the smallest LogitVar (ties: lower index
first, pandas ``nsmallest``). Each selected neuron carries the paper code's "ratio"
``norm_i / log(max(1e-10, LogitVar_i))``. (The shipped result file
``neuron_analysis_results.json`` holds positive ratios of about 5e3-1e4, which that formula
cannot produce: it was written by an earlier version of the code. We follow the code.)

The paper ran on TransformerLens-processed weights (``HookedTransformer.from_pretrained``
defaults: ``fold_ln``, ``center_writing_weights``, ``center_unembed``). We read the raw HF basis
(:class:`~mechtests.engine.backend.ReadoutWeights`) and reproduce that processing explicitly
(``fold=True``, the default)::

    W_U[j, v] = g_j E[v, j] - mean_v' g_j E[v', j]           RMSNorm final norm (all our archs)

with ``E`` the HF ``lm_head.weight`` and ``g`` the final norm's gain. For a LayerNorm final norm
TransformerLens also centres ``W_U`` over ``d_model`` and the writing weights ``w_i`` over
``d_model``; both are applied when ``norm_kind == "layernorm"``. Models with logit
soft-capping (Gemma-2) are not centred: TransformerLens turns ``center_unembed`` off for them
(checked against its ``TransformerBridge`` compatibility mode in the unit tests).
``fold=False`` is the unfolded variant (``u_v = E[v, :]``, no centring). The cosine is
scale-invariant per column, but the gain rotates the columns and the centring shifts them, so
the two variants can select different neurons.

Cost and memory: the cosine matrix ``d_mlp x vocab`` (7.4 GB in fp32 for Llama-3.1-8B) is never
built. With ``û_v = u_v / |u_v|`` and ``ŵ_i = w_i / |w_i|``, the variance needs only the
vocabulary's Gram matrix ``G = sum_v û_v û_v^T`` (``d x d``) and sum ``s = sum_v û_v``::

    LogitVar_i = (ŵ_i^T G ŵ_i - (ŵ_i . s)^2 / V) / (V - 1)

The vocabulary is processed in chunks of ``chunk_size`` rows, each chunk's ``û^T û`` computed in
``compute_dtype`` and summed in float64, after subtracting the first chunk's mean ``û`` from
every ``û`` (the variance does not change; the cancellation does, when the mean cosine is large
against its spread); this costs ``V d^2`` multiply-adds instead of
``V d d_mlp`` (3.2x fewer for Gemma-3-270M and 3.5x for Llama-3.1-8B). On Gemma-3-270M it
agrees with the per-cosine two-pass variance to 1e-7 relative, with the same neuron order.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> w_out, unembed = torch.randn(16, 64, generator=g), torch.randn(50, 16, generator=g)
    >>> stats = neuron_stats_from(w_out, unembed, gain=torch.ones(16))
    >>> sel = select_entropy_neurons(stats, k=3, norm_top=0.25)
    >>> len(sel.indices), len(sel.pool)
    (3, 16)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mechtests.phases import PhaseCall, timed_phase

if TYPE_CHECKING:
    from mechtests.engine.backend import ReadoutWeights

__all__ = [
    "EntropyNeurons",
    "NeuronStats",
    "expected_chance_overlap",
    "logit_var",
    "neuron_stats",
    "neuron_stats_from",
    "overlap",
    "random_pool_draw",
    "random_pool_overlaps",
    "select_entropy_neurons",
]

DEFAULT_CHUNK = 1024  # vocabulary rows per chunk (8B shape: 16 MiB copy + 128 MiB Gram matrix)


@dataclass(frozen=True)
class NeuronStats:
    """Per-neuron norm and LogitVar of one model's last MLP (float64, CPU, ``[d_mlp]``)."""

    norm: torch.Tensor
    logit_var: torch.Tensor
    folded: bool

    @property
    def ratio(self) -> torch.Tensor:
        """The paper code's ``norm / log(max(1e-10, LogitVar))`` per neuron (negative)."""
        return self.norm / torch.log(torch.clamp(self.logit_var, min=1e-10))

    @property
    def d_mlp(self) -> int:
        return int(self.norm.shape[0])


@dataclass(frozen=True)
class EntropyNeurons:
    """The selected neurons (ascending LogitVar) and the top-norm pool they came from."""

    indices: tuple[int, ...]
    pool: tuple[int, ...]  # sorted neuron indices with norm above the quantile
    k: int
    norm_top: float
    norm_threshold: float
    ratios: dict[int, float]
    logit_vars: dict[int, float]


def _writing_rows(w_out: torch.Tensor, norm_kind: str, dtype: torch.dtype) -> torch.Tensor:
    """A copy of ``w_out`` as ``[d_mlp, d_model]`` rows in ``dtype`` (centred over d_model for
    LayerNorm, TransformerLens ``center_writing_weights``)."""
    w = w_out.t().to(dtype=dtype, copy=True)
    if norm_kind == "layernorm":
        w.sub_(w.mean(dim=1, keepdim=True))
    return w


def _neuron_norms(w_out: torch.Tensor, norm_kind: str, chunk_size: int) -> torch.Tensor:
    """``|w_i|`` per neuron in float64, ``chunk_size`` neurons at a time."""
    parts = []
    for start in range(0, w_out.shape[1], chunk_size):
        rows = _writing_rows(w_out[:, start : start + chunk_size], norm_kind, torch.float64)
        parts.append(rows.norm(dim=1))
    return torch.cat(parts).cpu()


def _vocab_mean(unembed: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``mean_v E[v, :]`` in float64 without upcasting the whole matrix."""
    total = torch.zeros(unembed.shape[1], dtype=torch.float64, device=unembed.device)
    for start in range(0, unembed.shape[0], chunk_size):
        total += unembed[start : start + chunk_size].to(torch.float64).sum(dim=0)
    return total / unembed.shape[0]


def logit_var(
    w_out: torch.Tensor,
    unembed: torch.Tensor,
    gain: torch.Tensor | None = None,
    *,
    center_unembed: bool = True,
    norm_kind: str = "rmsnorm",
    chunk_size: int = DEFAULT_CHUNK,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unbiased variance over the vocabulary of ``cos(w_i, u_v)`` per neuron, float64 ``[d_mlp]``.

    ``w_out`` is HF ``down_proj.weight`` ``[d_model, d_mlp]``; ``unembed`` is HF
    ``lm_head.weight`` ``[vocab, d_model]`` in any dtype (never upcast as a whole). ``gain``
    (``[d_model]``) is folded in as ``u_v = g * E[v]``; ``center_unembed`` subtracts the vocabulary
    mean of the (folded) columns; ``norm_kind="layernorm"`` also centres columns and writing
    weights over ``d_model`` (TransformerLens ``fold_ln`` + ``center_writing_weights``). Matrix
    products run in ``compute_dtype``; the Gram matrix is summed in float64.
    """
    if w_out.ndim != 2 or unembed.ndim != 2 or w_out.shape[0] != unembed.shape[1]:
        raise ValueError(
            f"expected w_out [d_model, d_mlp] and unembed [vocab, d_model]; got "
            f"{tuple(w_out.shape)} and {tuple(unembed.shape)}"
        )
    vocab = int(unembed.shape[0])
    if vocab < 2:
        raise ValueError("LogitVar needs a vocabulary of at least 2 tokens")
    device = unembed.device
    w = _writing_rows(w_out.to(device), norm_kind, compute_dtype)
    w.div_(w.norm(dim=1, keepdim=True))  # zero-norm neurons -> NaN, as in the paper's code
    g = None if gain is None else gain.to(device=device, dtype=compute_dtype)
    shift = None
    if center_unembed:
        mean = _vocab_mean(unembed, chunk_size)  # float64 [d]
        if gain is not None:
            mean = mean * gain.to(device, torch.float64)
        if norm_kind == "layernorm":
            mean = mean - mean.mean()
        shift = mean.to(compute_dtype)
    d = int(unembed.shape[1])
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    total = torch.zeros(d, dtype=torch.float64, device=device)
    pilot: torch.Tensor | None = None
    for start in range(0, vocab, chunk_size):
        u = unembed[start : start + chunk_size].to(dtype=compute_dtype, copy=True)  # [c, d]
        if g is not None:
            u.mul_(g)
        if norm_kind == "layernorm":
            u.sub_(u.mean(dim=1, keepdim=True))
        if shift is not None:
            u.sub_(shift)
        u.div_(u.norm(dim=1, keepdim=True))
        if pilot is None:  # variance is shift-invariant: centre on the first chunk's mean
            pilot = u.mean(dim=0)
        u.sub_(pilot)
        gram += (u.t() @ u).to(torch.float64)
        total += u.to(torch.float64).sum(dim=0)
        del u
    w64 = w.to(torch.float64)
    squares = ((w64 @ gram) * w64).sum(dim=1)  # sum_v (cos_{i,v} - pilot_i)^2
    sums = w64 @ total  # sum_v (cos_{i,v} - pilot_i)
    return ((squares - sums * sums / vocab) / (vocab - 1)).cpu()


def neuron_stats_from(
    w_out: torch.Tensor,
    unembed: torch.Tensor,
    gain: torch.Tensor | None = None,
    *,
    fold: bool = True,
    center_unembed: bool = True,
    norm_kind: str = "rmsnorm",
    chunk_size: int = DEFAULT_CHUNK,
    compute_dtype: torch.dtype = torch.float32,
) -> NeuronStats:
    """Norms and LogitVar from raw tensors. ``fold=True``: TransformerLens's processing (gain
    folded, ``W_U`` centred over the vocabulary unless ``center_unembed`` is false);
    ``fold=False``: the raw ``E``, no gain, no centring."""
    var = logit_var(
        w_out,
        unembed,
        gain if fold else None,
        center_unembed=fold and center_unembed,
        norm_kind=norm_kind if fold else "rmsnorm",
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
    )
    norms = _neuron_norms(w_out, norm_kind if fold else "rmsnorm", chunk_size)
    return NeuronStats(norm=norms, logit_var=var, folded=fold)


def _neurons_scored(call: PhaseCall, _stats: NeuronStats) -> int:
    return int(call.arg("weights").mlp_out.shape[1])


@timed_phase("entropy neurons", items=_neurons_scored)
def neuron_stats(
    weights: ReadoutWeights,
    *,
    fold: bool = True,
    softcap: float | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    compute_dtype: torch.dtype = torch.float32,
) -> NeuronStats:
    """:func:`neuron_stats_from` on a backend's :class:`ReadoutWeights` (raw HF basis).

    ``softcap``: the model's final logit soft-capping (Gemma-2's ``final_logit_softcapping``).
    TransformerLens disables ``center_unembed`` for such models (capped logits are not
    translation invariant), so the folded variant then folds the gain without centring.
    """
    return neuron_stats_from(
        weights.mlp_out,
        weights.unembed,
        weights.final_norm_weight,
        fold=fold,
        center_unembed=not softcap,
        norm_kind=weights.norm_kind,
        chunk_size=chunk_size,
        compute_dtype=compute_dtype,
    )


@timed_phase("entropy neurons")
def select_entropy_neurons(
    stats: NeuronStats, k: int = 10, norm_top: float = 0.25
) -> EntropyNeurons:
    """The paper's ``filter_neurons``: top ``norm_top`` share by norm (strict), then the ``k``
    lowest LogitVar. With ``|pool| <= k`` the whole pool is returned (as the paper's code)."""
    if not 0.0 < norm_top <= 1.0:
        raise ValueError(f"norm_top must be in (0, 1], got {norm_top!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    threshold = float(torch.quantile(stats.norm, 1.0 - norm_top))
    pool = torch.nonzero(stats.norm > threshold).flatten()
    var = stats.logit_var[pool]
    order = torch.sort(torch.nan_to_num(var, nan=math.inf), stable=True).indices
    chosen = [int(pool[j]) for j in order[: min(k, len(pool))]]
    ratio = stats.ratio
    return EntropyNeurons(
        indices=tuple(chosen),
        pool=tuple(int(i) for i in pool),
        k=k,
        norm_top=norm_top,
        norm_threshold=threshold,
        ratios={i: float(ratio[i]) for i in chosen},
        logit_vars={i: float(stats.logit_var[i]) for i in chosen},
    )


def overlap(a: Iterable[int], b: Iterable[int]) -> tuple[int, float]:
    """Shared count and IoU ``|A & B| / |A | B|`` of two neuron sets (paper's ``compute_iou``)."""
    set_a, set_b = set(a), set(b)
    union = set_a | set_b
    shared = len(set_a & set_b)
    return shared, (shared / len(union) if union else 0.0)


def random_pool_overlaps(
    reference: Sequence[int], pool: Sequence[int], k: int, n_draws: int, seed: int
) -> torch.Tensor:
    """Shared counts between ``reference`` and ``n_draws`` random ``k``-subsets of ``pool``.

    The chance null of the overlap claims (docs/claims.md E4); returns ``[n_draws]`` int64.
    """
    if not pool:
        raise ValueError("random_pool_overlaps needs a non-empty pool")
    gen = torch.Generator().manual_seed(seed)
    pool_t = torch.as_tensor(list(pool), dtype=torch.long)
    in_ref = torch.isin(pool_t, torch.as_tensor(list(reference), dtype=torch.long))
    take = min(k, len(pool))
    counts = torch.empty(n_draws, dtype=torch.long)
    for b in range(n_draws):
        pick = torch.randperm(len(pool), generator=gen)[:take]
        counts[b] = int(in_ref[pick].sum())
    return counts


def random_pool_draw(pool: Sequence[int], k: int, seed: int) -> tuple[int, ...]:
    """One seeded random ``k``-subset of ``pool`` (sorted), e.g. neurons for a control ablation."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(pool), generator=gen)[: min(k, len(pool))]
    return tuple(sorted(int(pool[int(j)]) for j in pick))


def expected_chance_overlap(reference: Sequence[int], pool: Sequence[int], k: int) -> float:
    """Exact expected shared count of a uniform ``k``-subset of ``pool`` with ``reference``:
    ``min(k, |pool|) * |reference & pool| / |pool|`` (hypergeometric mean)."""
    if not pool:
        return math.nan
    hits = len(set(reference) & set(pool))
    return min(k, len(pool)) * hits / len(pool)
