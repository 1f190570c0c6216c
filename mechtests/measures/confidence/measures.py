"""Confidence claims (Du et al. 2025 claim 5): entropy neurons and the shift.

Weight-only claims (E1 overlap, E2 robustness, E4 chance) read each model's last-MLP and
unembedding weights once (:meth:`FamilyContext.memo` per role and processing variant) and
compare the selected sets (:mod:`mechtests.methods.entropy_neurons`). ``explain_shift`` runs
both models on the family's truth statements and mean-ablates their entropy neurons
(:mod:`mechtests.methods.confidence`).

Controls:
    * overlap / robust: the control base's neuron set where the family has a ``control`` role
      (independently trained, so its neuron indices are not aligned: chance level), else the
      expected overlap of ``k`` neurons drawn at random from the post model's top-norm pool;
    * chance_control: the exact hypergeometric expectation next to the Monte-Carlo one;
    * explain_shift: the same share with ``k`` random top-norm-pool neurons ablated instead.
"""

from __future__ import annotations

import dataclasses
import json
import random
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mechtests.claims.model import Claim, Measurement
from mechtests.data.statements import load_statements
from mechtests.measures import measure
from mechtests.methods.entropy_neurons import (
    EntropyNeurons,
    NeuronStats,
    expected_chance_overlap,
    neuron_stats,
    overlap,
    random_pool_draw,
    random_pool_overlaps,
    select_entropy_neurons,
)

if TYPE_CHECKING:
    from mechtests.measures.context import FamilyContext
    from mechtests.methods.confidence import AblationEntropies, FinalReadout

K = 10
NORM_TOP = 0.25
N_DRAWS = 1000


def _seed(ctx: FamilyContext, *parts: object) -> int:
    text = ":".join(str(p) for p in (ctx.options.seed, *parts))
    return zlib.crc32(text.encode())


def _final_config(ctx: FamilyContext, role: str) -> tuple[float, float | None]:
    """The final norm's epsilon and the logit soft-cap (None when absent) from config.json."""
    config = json.loads((ctx.checkpoint_dir(role) / "config.json").read_text())
    config = config.get("text_config", config)
    eps = config.get("rms_norm_eps", config.get("layer_norm_eps", config.get("norm_eps", 1e-5)))
    softcap = config.get("final_logit_softcapping")
    return float(eps), (float(softcap) if softcap else None)


def _stats(ctx: FamilyContext, role: str, fold: bool) -> NeuronStats:
    def compute() -> NeuronStats:
        backend = ctx.backend(role)
        weights = backend.readout_weights()  # CPU copies; compute where the model lives
        if backend.device.type != "cpu":
            weights = dataclasses.replace(weights, unembed=weights.unembed.to(backend.device),
                                          mlp_out=weights.mlp_out.to(backend.device))
        return neuron_stats(weights, fold=fold, softcap=_final_config(ctx, role)[1])

    return ctx.memo(f"confidence.stats:{role}:fold={fold}", compute)


def _select(ctx: FamilyContext, role: str, params: dict[str, Any], k: int | None = None,
            norm_top: float | None = None) -> EntropyNeurons:
    stats = _stats(ctx, role, bool(params.get("fold", True)))
    return select_entropy_neurons(
        stats,
        k=int(params.get("k", K)) if k is None else k,
        norm_top=float(params.get("norm_top", NORM_TOP)) if norm_top is None else norm_top,
    )


def _control_role(ctx: FamilyContext, pair: tuple[str, str]) -> str | None:
    return "control" if ctx.family.has_control and "control" not in pair else None


def _set_details(sel: EntropyNeurons) -> dict[str, Any]:
    return {
        "neurons": list(sel.indices),
        "logit_var": [sel.logit_vars[i] for i in sel.indices],
        "ratio": [sel.ratios[i] for i in sel.indices],
        "pool_size": len(sel.pool),
        "norm_threshold": sel.norm_threshold,
    }


@measure("confidence.entropy_neurons.overlap")
def entropy_overlap(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """E1: shared top-k entropy neurons between the pair (docs/claims.md (claim 5))."""
    params = dict(claim.params)
    ref, post = pair
    a, b = _select(ctx, ref, params), _select(ctx, post, params)
    shared, iou = overlap(a.indices, b.indices)
    draws = random_pool_overlaps(a.indices, b.pool, a.k, int(params.get("n_draws", N_DRAWS)),
                                 _seed(ctx, claim.id, ref, post))
    chance = float(draws.float().mean())
    common = sorted(set(a.indices) & set(b.indices))
    details: dict[str, Any] = {
        "shared": shared,
        "iou": iou,
        "k": a.k,
        "norm_top": a.norm_top,
        "folded": bool(params.get("fold", True)),
        ref: _set_details(a),
        post: _set_details(b),
        "shared_neurons": common,
        "ratio_diff_shared": {i: b.ratios[i] - a.ratios[i] for i in common},
        "chance_random_pool_mc": chance,
        "chance_random_pool_exact": expected_chance_overlap(a.indices, b.pool, a.k),
    }
    control_role = _control_role(ctx, pair)
    if control_role is not None:
        c = _select(ctx, control_role, params)
        control = float(overlap(a.indices, c.indices)[0])
        details["control_base_shared"] = control
        details[control_role] = _set_details(c)
        label = "control base (unaligned indices: chance)"
    else:
        control, label = chance, f"{a.k} random top-norm-pool neurons (mean of draws)"
    return Measurement(metric=float(shared), control=control, control_label=label,
                       n=a.k, details=details)


@measure("confidence.entropy_neurons.robust")
def entropy_robustness(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """E2: the smallest shared fraction ``s / k`` over a grid of k and norm cuts."""
    params = dict(claim.params)
    ref, post = pair
    control_role = _control_role(ctx, pair)
    rows: list[dict[str, Any]] = []
    for k in params.get("ks", [10, 20]):
        for cut in params.get("norm_tops", [0.10, 0.25, 0.50]):
            a = _select(ctx, ref, params, int(k), float(cut))
            b = _select(ctx, post, params, int(k), float(cut))
            shared, iou = overlap(a.indices, b.indices)
            k_eff = max(1, min(len(a.indices), len(b.indices)))
            if control_role is not None:
                c = _select(ctx, control_role, params, int(k), float(cut))
                ctl = overlap(a.indices, c.indices)[0] / k_eff
            else:
                ctl = expected_chance_overlap(a.indices, b.pool, int(k)) / k_eff
            rows.append({"k": int(k), "norm_top": float(cut), "shared": shared, "iou": iou,
                         "fraction": shared / k_eff, "control_fraction": ctl})
    worst = min(rows, key=lambda r: r["fraction"])
    label = ("control base, largest fraction over the grid" if control_role else
             "random top-norm-pool neurons (exact expectation), largest over the grid")
    return Measurement(
        metric=float(worst["fraction"]),
        control=float(max(r["control_fraction"] for r in rows)),
        control_label=label,
        n=len(rows),
        details={"grid": rows, "worst": worst, "folded": bool(params.get("fold", True))},
    )


@measure("confidence.entropy_neurons.chance_control")
def entropy_chance(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """E4: mean shared count of k random post top-norm-pool neurons with the ref top-k.

    The control is the observed overlap of the pair's own top-k (E1's metric): chance must sit
    well below it, so an 8-of-10 overlap means something at this model's pool size. The exact
    hypergeometric expectation is in the details as a check of the Monte-Carlo mean.
    """
    params = dict(claim.params)
    ref, post = pair
    a, b = _select(ctx, ref, params), _select(ctx, post, params)
    n_draws = int(params.get("n_draws", N_DRAWS))
    draws = random_pool_overlaps(a.indices, b.pool, a.k, n_draws, _seed(ctx, claim.id, ref, post))
    exact = expected_chance_overlap(a.indices, b.pool, a.k)
    shared, _ = overlap(a.indices, b.indices)
    return Measurement(
        metric=float(draws.float().mean()),
        control=float(shared),
        control_label=f"observed {ref}/{post} top-{a.k} overlap",
        n=n_draws,
        details={
            "exact_chance": float(exact),
            "observed_shared": shared,
            "pool_size": len(b.pool),
            "k": a.k,
            "p_shared_ge_0.8k": float((draws >= 0.8 * a.k).float().mean()),
            "q95": float(torch.quantile(draws.double(), 0.95)),
            "max": int(draws.max()),
        },
    )


# -- explain_shift --------------------------------------------------------------------------


def _statements(ctx: FamilyContext, params: dict[str, Any]) -> list[str]:
    names = params.get("datasets") or [*ctx.family.truth.train_datasets,
                                       ctx.family.truth.heldout_dataset]
    rows: list[str] = []
    for name in names:
        rows.extend(load_statements(ctx.datasets, str(name)).statements)
    limit = int(params.get("n_prompts", 256))
    if len(rows) > limit:
        rng = random.Random(f"{ctx.options.seed}:confidence.statements")
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]
    return ctx.subsample(rows, salt="confidence.statements")


def _readout(ctx: FamilyContext, role: str) -> FinalReadout:
    from mechtests.methods.confidence import FinalReadout

    eps, softcap = _final_config(ctx, role)
    return FinalReadout.from_weights(ctx.backend(role).readout_weights(), eps, softcap)


def _ablations(ctx: FamilyContext, role: str, prompts: Sequence[str],
               sets: dict[str, tuple[int, ...]], batch_size: int) -> dict[str, AblationEntropies]:
    from mechtests.methods.confidence import ablation_entropies_many, neuron_means

    digest = zlib.crc32("\0".join(prompts).encode())
    key = f"confidence.ablation:{role}:{digest}:{sorted(sets.items())}"

    def compute() -> dict[str, AblationEntropies]:
        prefix = ctx.family.models[role].prompt_prefix
        texts = [prefix + p for p in prompts]
        backend = ctx.backend(role)
        readout = _readout(ctx, role)
        union = sorted({i for s in sets.values() for i in s})
        means = neuron_means(backend, texts, union, batch_size=batch_size)
        where = {n: j for j, n in enumerate(union)}
        plans = {name: (list(s), means[[where[i] for i in s]]) for name, s in sets.items()}
        return ablation_entropies_many(backend, texts, plans, readout, batch_size=batch_size)

    return ctx.memo(key, compute)


def _share(clean_ref: torch.Tensor, clean_post: torch.Tensor, abl_ref: torch.Tensor,
           abl_post: torch.Tensor) -> float:
    shift = float((clean_ref - clean_post).mean())
    return 1.0 - float((abl_ref - abl_post).mean()) / shift if shift != 0.0 else float("nan")


@measure("confidence.entropy_neurons.explain_shift")
def entropy_shift_explained(ctx: FamilyContext, claim: Claim,
                            pair: tuple[str, str]) -> Measurement:
    """Share of the ref->post entropy shift removed by mean-ablating each model's entropy
    neurons (total effect); control: the same with k random top-norm-pool neurons."""
    from mechtests.methods.stats import bootstrap_interval

    params = dict(claim.params)
    prompts = _statements(ctx, params)
    batch_size = int(params.get("batch_size", 16))
    res: dict[str, dict[str, AblationEntropies]] = {}
    for role in pair:
        sel = _select(ctx, role, params)
        rand = random_pool_draw(sel.pool, sel.k, _seed(ctx, claim.id, role))
        res[role] = _ablations(ctx, role, prompts, {"entropy": sel.indices, "random": rand},
                               batch_size)
    ref, post = (res[r] for r in pair)
    h_ref, h_post = ref["entropy"].clean, post["entropy"].clean

    def share(kind: str, effect: str, idx: Any = slice(None)) -> float:
        return _share(h_ref[idx], h_post[idx], getattr(ref[kind], effect)[idx],
                      getattr(post[kind], effect)[idx])

    metric = share("entropy", "total")
    interval = bootstrap_interval(lambda i: share("entropy", "total", i), n=len(prompts),
                                  seed=_seed(ctx, claim.id, *pair))
    details: dict[str, Any] = {
        "n_prompts": len(prompts),
        "n_tokens": ref["entropy"].n_tokens,
        "entropy_ref": float(h_ref.mean()),
        "entropy_post": float(h_post.mean()),
        "shift_ref_minus_post": float((h_ref - h_post).mean()),
        "shift_interval": bootstrap_interval(h_ref - h_post, seed=_seed(ctx, "shift", *pair)),
        "share_total": metric,
        "share_direct": share("entropy", "direct"),
        "share_random_total": share("random", "total"),
        "share_random_direct": share("random", "direct"),
        "readout_error": max(r[k].readout_error for r in (ref, post) for k in r),
    }
    for role, r in zip(pair, (ref, post)):
        for kind in ("entropy", "random"):
            a = r[kind]
            details[f"{role}.{kind}.neurons"] = list(a.neurons)
            details[f"{role}.{kind}.delta_total"] = float((a.total - a.clean).mean())
            details[f"{role}.{kind}.delta_direct"] = float((a.direct - a.clean).mean())
    return Measurement(
        metric=metric,
        control=share("random", "total"),
        control_label=f"{len(ref['random'].neurons)} random top-norm-pool neurons ablated",
        interval=interval,
        n=len(prompts),
        details=details,
    )
