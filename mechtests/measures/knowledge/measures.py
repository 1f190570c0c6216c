"""Knowledge-location and cross-model patching claims (Du et al. 2025 claims 1 and 2).

Measures, on a pair ``(ref, post)`` (``ref`` is the base); ``N`` = the paper's ``normalize()``
of a mean patching heatmap ``A``, ``R`` = recovered fraction, ``Rk`` = max of ``R`` over the
knowledge columns:

=======================================  ===========================================================
claim id                                 metric
=======================================  ===========================================================
``knowledge.heatmap.correlation``        K1: Pearson ``r(N(A_ref), N(A_post))``
``knowledge.heatmap.knowledge_maxdiff``  K2: ``max |N(A_ref) - N(A_post)|`` on knowledge columns
``knowledge.heatmap.hot_cells``          K3: Jaccard of the cells with ``N >= 0.5``
``knowledge.heatmap.peak_layer``         K4: ``|peak_ref - peak_post| / n_layers`` (last subject)
``knowledge.heatmap.reversed_control``   K5: ``r(N(A_ref), N(A_post) with layers reversed)``
``crossmodel.forward.correlation``       X1: ``r(N(A_ref->post), N(A_post->post))``
``crossmodel.forward.recovery``          X2: ``Rk(ref->post) / Rk(post->post)``
``crossmodel.asymmetry``                 X3: ``Rk(ref->post) - Rk(post->ref)``, majority of datasets
``crossmodel.self_patch``                X4: ``|R(last layer, last token) - 1|`` of self-patching
=======================================  ===========================================================

Controls. K1-K4: the same comparison with the independent control base's heatmap in place of
the post model's where the family has one (two unrelated models already share much of a
heatmap's structure), else with the post heatmap's layers reversed. K5 is itself the reversed
null; its control is the real ``r``. X1-X3: the null source of each patch in place of its source
(:func:`mechtests.measures.knowledge.runs.null_source`): the control base's TRUE activations where
the family has one, else the source model's own FALSE-prompt activations at the same sites.
Why the FALSE run of the source is the right null for each claim without a control base:

* X2 (``Rk`` ratio) and X3 (asymmetry) ask whether the *TRUE statement* transfers. The source's
  FALSE run carries everything else the real patch carries (the model difference, the source's
  norms and distribution, the same tokens up to the FALSE ones), so its ``Rk`` is what the model
  difference alone restores, about 0 where the transfer comes from the fact. X3's null is
  ``Rk(ref FALSE -> post) - Rk(post FALSE -> ref)``: a post model that any foreign activation
  pushes towards TRUE shows its spurious asymmetry there. A different pair's TRUE prompt
  (resample ablation) would be no null: any TRUE statement restores TRUE at its object and
  last tokens, so its ``Rk`` follows the real one.
* X1 (map correlation): the null map equals the real one on the columns before the first
  TRUE/FALSE difference (the source's TRUE and FALSE prompts agree there), so the control ``r``
  gets every bit of structure the model difference explains, and the real ``r`` must beat it
  through the columns that carry the fact.
* X4 (self-patching) needs no null source: the source's FALSE run patched into itself is the
  identity (``R = 0`` everywhere, a control that cannot fail); its control is the same
  self-patching maps one cell to the left of the readout.

Model offset (X1-X3): a cross-model patch moves a cell by the fact and by the difference
between the two models; their readouts can differ by more than the fact's whole TRUE/FALSE gap
(Gemma-3-270M on ``cities``: mean ``LD_F`` -0.69 base, -0.33 instruct, gaps 0.025 and 0.044).
The min-max range of ``N`` and the scale of ``R`` are then set by the offset, and no map statistic
can tell the fact from the model. Each measure reports ``fact_to_offset``
(:func:`mechtests.measures.knowledge.aggregate.fact_to_offset`) for the patches it reads (X3: both
directions, the worse one), which thresholds.yaml requires to be at least 1.

Cells (``params.cells``): ``interior`` (default for K1, K3, K5) drops cells fixed by the
patching structure (:func:`mechtests.methods.heatmaps.interior_mask`); ``all`` is the paper's.
Several datasets: each is judged and the worst (by its interval bound) is reported, all in
``details``; X3 takes the asymmetry reached by at least half of the datasets. Intervals:
percentile bootstrap over pairs (``params.n_boot``, default 1000).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mechtests.claims.model import Claim, Measurement
from mechtests.measures import measure
from mechtests.measures.knowledge.aggregate import (
    Pair,
    Stat,
    caveat,
    finite,
    heatmap_figures,
    judge_datasets,
    offset_quantities,
    split_decidable,
    unique_figures,
)
from mechtests.measures.knowledge.runs import (
    N_BOOT,
    KnowledgeRun,
    ensure_maps,
    knowledge_datasets,
    knowledge_run,
    null_label,
    null_source,
    seed_for,
)
from mechtests.methods.heatmaps import (
    hot_cells,
    interior_mask,
    jaccard,
    knowledge_recovery,
    max_abs_diff,
    normalize,
    peak_layer,
    pearson_r,
    reverse_layers,
    shuffle_layers,
)
from mechtests.methods.stats import bootstrap_interval

if TYPE_CHECKING:
    from mechtests.measures.context import FamilyContext



def _n(run: KnowledgeRun, key: Pair, idx: np.ndarray | None) -> np.ndarray:
    return normalize(run.heat(key, idx))


def _mask(run: KnowledgeRun, cells: str) -> np.ndarray | None:
    if cells == "all":
        return None
    shape = (run.n_layers, len(run.columns) if run.grouped else run.pset.width)
    return interior_mask(shape, run.first_informative_column)


def _null_role(ctx: FamilyContext, pair: Pair) -> str | None:
    return "control" if ctx.family.has_control and "control" not in pair else None


# -- K1-K5: one model's heatmap against another's -----------------------------------------------
def _self_claim(
    ctx: FamilyContext, claim: Claim, pair: Pair, op: str,
    compare: Callable[[KnowledgeRun, np.ndarray, np.ndarray, np.ndarray | None], float],
    reversed_null: Callable[[np.ndarray], np.ndarray] = reverse_layers,
    default_cells: str = "interior",
) -> Measurement:
    """``compare(run, N_ref-or-A_ref, other, mask)`` for post vs the control or reversed null."""
    ref, post = pair
    cells = str(claim.params.get("cells", default_cells))
    null = _null_role(ctx, pair)
    keys = [(ref, ref), (post, post)] + ([(null, null)] if null else [])

    def metric(run: KnowledgeRun, idx: np.ndarray) -> float:
        return compare(run, _n(run, (ref, ref), idx), _n(run, (post, post), idx), _mask(run, cells))

    def control(run: KnowledgeRun, idx: np.ndarray) -> float:
        other = _n(run, (null, null), idx) if null else reversed_null(_n(run, (post, post), idx))
        return compare(run, _n(run, (ref, ref), idx), other, _mask(run, cells))

    label = f"{ref} vs the independent control base" if null else \
        f"{ref} vs {post} with layers reversed"
    return judge_datasets(ctx, claim, pair, op, keys, metric, control, label,
                           extra=lambda run: _self_extra(run, ref, post))


def _self_extra(run: KnowledgeRun, ref: str, post: str) -> dict[str, Any]:
    a, b = normalize(run.heat((ref, ref))), normalize(run.heat((post, post)))
    groups = {"subject": list(run.pset.subject_columns), "object": list(run.pset.object_columns),
              "last token": [a.shape[1] - 1]}
    return {
        "r_all_cells": pearson_r(a, b),
        "maxdiff_all": max_abs_diff(a, b),
        "maxdiff_by_column_group": {
            k: max_abs_diff(a, b, v) for k, v in groups.items() if v and not run.grouped
        },
        "columns": list(run.columns),
        "ld_true": {m: float(run.ld_true[m].mean()) for m in (ref, post)},
        "ld_false": {m: float(run.ld_false[m].mean()) for m in (ref, post)},
    }


@measure("knowledge.heatmap.correlation")
def heatmap_correlation(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """K1: Pearson r of the normalised heatmaps (interior cells by default)."""
    return _self_claim(ctx, claim, pair, ">=", lambda run, a, b, m: pearson_r(a, b, m))


@measure("knowledge.heatmap.knowledge_maxdiff")
def heatmap_maxdiff(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """K2: the largest normalised difference on the knowledge (subject/object) columns."""
    return _self_claim(ctx, claim, pair, "<=",
                       lambda run, a, b, m: max_abs_diff(a, b, run.knowledge_columns),
                       default_cells="all")


@measure("knowledge.heatmap.hot_cells")
def heatmap_hot_cells(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """K3: Jaccard overlap of the cells with ``N >= params.hot`` (0.5)."""
    hot = float(claim.params.get("hot", 0.5))
    return _self_claim(ctx, claim, pair, ">=",
                       lambda run, a, b, m: jaccard(hot_cells(a, hot), hot_cells(b, hot), m))


@measure("knowledge.heatmap.peak_layer")
def heatmap_peak_layer(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """K4: the shift of the last subject column's peak layer, as a fraction of the depth.

    Raw mean logit differences (not ``N``) give the argmax: the control uses the control base's
    heatmap or the post heatmap's layers reversed.
    """
    ref, post = pair
    null = _null_role(ctx, pair)
    keys = [(ref, ref), (post, post)] + ([(null, null)] if null else [])

    def shift(run: KnowledgeRun, a: np.ndarray, b: np.ndarray) -> float:
        col = run.peak_column
        return abs(peak_layer(a, col) - peak_layer(b, col)) / run.n_layers

    def metric(run: KnowledgeRun, idx: np.ndarray) -> float:
        return shift(run, run.heat((ref, ref), idx), run.heat((post, post), idx))

    def control(run: KnowledgeRun, idx: np.ndarray) -> float:
        other = run.heat((null, null), idx) if null else reverse_layers(run.heat((post, post), idx))
        return shift(run, run.heat((ref, ref), idx), other)

    def extra(run: KnowledgeRun) -> dict[str, Any]:
        col = run.peak_column
        return {"column": run.columns[col], "peak_layers": {
            m: peak_layer(run.heat((m, m)), col) for m in dict.fromkeys([ref, post, null] if null
                                                                         else [ref, post])}}

    label = f"{ref} vs the independent control base" if null else \
        f"{ref} vs {post} with layers reversed"
    return judge_datasets(ctx, claim, pair, "<=", keys, metric, control, label, extra=extra)


@measure("knowledge.heatmap.reversed_control")
def heatmap_reversed(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """K5: r against the post heatmap with its layers reversed; the control is the real r."""
    ref, post = pair
    cells = str(claim.params.get("cells", "interior"))
    keys = [(ref, ref), (post, post)]

    def metric(run: KnowledgeRun, idx: np.ndarray) -> float:
        return pearson_r(_n(run, (ref, ref), idx), reverse_layers(_n(run, (post, post), idx)),
                         _mask(run, cells))

    def control(run: KnowledgeRun, idx: np.ndarray) -> float:
        return pearson_r(_n(run, (ref, ref), idx), _n(run, (post, post), idx), _mask(run, cells))

    def extra(run: KnowledgeRun) -> dict[str, Any]:
        a, b = _n(run, (ref, ref), None), _n(run, (post, post), None)
        shuffled = [pearson_r(a, shuffle_layers(b, s), _mask(run, cells)) for s in range(20)]
        return {"r_layer_shuffled_mean": float(np.nanmean(shuffled))}

    return judge_datasets(ctx, claim, pair, "<=", keys, metric, control,
                           f"r({ref}, {post}) unreversed", extra=extra)


# -- X1-X4: cross-model patching ------------------------------------------------------------------
@measure("crossmodel.forward.correlation")
def forward_correlation(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """X1: r between ref -> post and post's own heatmap (all cells by default)."""
    ref, post = pair
    null = null_source(ctx, ref)
    cells = str(claim.params.get("cells", "all"))
    keys = [(ref, post), (post, post), (null, post)]

    def corr(src: str) -> Stat:
        return lambda run, idx: pearson_r(_n(run, (src, post), idx), _n(run, (post, post), idx),
                                          _mask(run, cells))

    return judge_datasets(ctx, claim, pair, ">=", keys, corr(ref), corr(null),
                           f"{null_label(ctx, ref)} patched into {post}",
                           offset_directions=[(ref, post)])


def _rk(run: KnowledgeRun, key: Pair, idx: np.ndarray) -> float:
    return knowledge_recovery(run.recovered(key, idx), run.knowledge_columns)


@measure("crossmodel.forward.recovery")
def forward_recovery(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """X2: ``Rk(ref -> post) / Rk(post -> post)`` on the same resample."""
    ref, post = pair
    null = null_source(ctx, ref)
    keys = [(ref, post), (post, post), (null, post)]

    def ratio(src: str) -> Stat:
        def stat(run: KnowledgeRun, idx: np.ndarray) -> float:
            own = _rk(run, (post, post), idx)
            return _rk(run, (src, post), idx) / own if own > 0 else float("nan")
        return stat

    def extra(run: KnowledgeRun) -> dict[str, Any]:
        full = np.arange(run.n)
        return {"Rk": {f"{s}->{post}": _rk(run, (s, post), full) for s in (ref, post, null)}}

    return judge_datasets(ctx, claim, pair, ">=", keys, ratio(ref), ratio(null),
                           f"{null_label(ctx, ref)} patched into {post}", extra=extra,
                           offset_directions=[(ref, post)])


@measure("crossmodel.asymmetry")
def asymmetry(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """X3: ``Rk(ref -> post) - Rk(post -> ref)``, the value reached by at least half of the
    datasets (the ceil(n/2)-th largest), with a bootstrap stratified by dataset."""
    ref, post = pair
    null_fwd, null_bwd = null_source(ctx, ref), null_source(ctx, post)
    runs = [knowledge_run(ctx, d) for d in knowledge_datasets(ctx, claim.params.get("datasets"))]
    for run in runs:
        ensure_maps(ctx, run, [(ref, post), (post, ref), (null_fwd, post), (null_bwd, ref)])
    kept, excluded, quantities = split_decidable(runs, [post, ref])
    quantities.update(offset_quantities(runs, kept or runs, [(ref, post), (post, ref)]))
    runs = kept or runs

    def majority(values: list[float]) -> float:
        vals = sorted((v for v in values if finite(v)), reverse=True)
        return vals[math.ceil(len(values) / 2) - 1] if len(vals) >= math.ceil(len(values) / 2) \
            else float("nan")

    def delta(src_fwd: str, src_bwd: str, run: KnowledgeRun, idx: np.ndarray) -> float:
        return _rk(run, (src_fwd, post), idx) - _rk(run, (src_bwd, ref), idx)

    full = [np.arange(r.n) for r in runs]
    fwd = [delta(ref, post, r, i) for r, i in zip(runs, full)]
    null = [delta(null_fwd, null_bwd, r, i) for r, i in zip(runs, full)]
    ci = bootstrap_interval(
        lambda *idx: majority([delta(ref, post, r, i) for r, i in zip(runs, idx)]),
        n=[r.n for r in runs], n_boot=int(claim.params.get("n_boot", N_BOOT)),
        seed=seed_for(ctx, claim.id),
    )
    figures = [f for r in runs for f in heatmap_figures(ctx, r, pair, "crossmodel")]
    return Measurement(
        metric=majority(fwd),
        control=majority(null),
        control_label=(
            f"Rk({null_label(ctx, ref)} -> {post}) - Rk(same -> {ref})" if null_fwd == null_bwd
            else f"Rk({null_label(ctx, ref)} -> {post}) - Rk({null_label(ctx, post)} -> {ref})"),
        interval=ci,
        n=sum(r.n for r in runs),
        details={**quantities, "pair": list(pair), "excluded": excluded,
                 **({"caveat": caveat(excluded)} if excluded else {}), "datasets": {
            r.dataset: {"asymmetry": f, "null_asymmetry": z, "n": r.n,
                        "Rk": {f"{a}->{b}": _rk(r, (a, b), np.arange(r.n)) for a, b in
                               [(ref, post), (post, ref), (post, post), (ref, ref)]}}
            for r, f, z in zip(runs, fwd, null)}},
        figures=unique_figures(figures),
    )


@measure("crossmodel.self_patch")
def self_patch(ctx: FamilyContext, claim: Claim, pair: Pair) -> Measurement:
    """X4: self-patching the last layer at the last token restores the clean TRUE logit
    difference (``R = 1``) in both models. Control: the same models' ``|R - 1|`` one cell to the
    left of the readout in the last layer, at the first column where the TRUE and FALSE prompts
    differ (the last token is all the readout sees after the last block, so a live patch gives
    ``R = 0`` there): a pipeline that read the clean TRUE run instead of patching would give
    ``R = 1`` at both cells. The metric is float noise (about 1e-7) on every dataset, so the
    dataset reported is the one where the control is closest to it (the weakest contrast).
    Holds for either sign of ``LD_T - LD_F``, so no dataset is left out for its order."""
    ref, post = pair
    keys = [(ref, ref), (post, post)]

    def cell(run: KnowledgeRun, key: Pair, idx: np.ndarray, column: int) -> float:
        return abs(float(run.recovered(key, idx)[-1, column]) - 1.0)

    def metric(run: KnowledgeRun, idx: np.ndarray) -> float:
        return max(cell(run, k, idx, -1) for k in keys)

    def control(run: KnowledgeRun, idx: np.ndarray) -> float:
        return min(cell(run, k, idx, run.first_informative_column) for k in keys)

    return judge_datasets(ctx, claim, pair, "<=", keys, metric, control,
                          "|R - 1| at the last layer's first informative column (R = 0 "
                          "expected)", interval=False, worst_by="contrast", needs_order=False)
