"""Several datasets -> one knowledge measurement: which datasets can decide, and the worst one.

A patching heatmap and its recovered fraction ``R = (A - LD_F) / (LD_T - LD_F)`` mean what they
say only when the target model rates the TRUE statements above the FALSE ones
(``LD_T > LD_F``): the paper's ``normalize()`` marks the upper half of a map's range as the
cells that carry the fact, and with ``LD_T < LD_F`` the cells that carry it are the map's
*lowest*. A dataset on which a model that the claim reads gets the facts backwards (the organism
on ``neg_cities``: every model reads "X is not in Y" as "X is in Y") cannot test where that
model keeps the facts, so it is left out of the worst-dataset choice and named in the
measurement (``details["excluded"]`` and a caveat in the verdict's reason). The quantities the
claims' preconditions read (thresholds.yaml) are reported at the top of ``details``:

* ``datasets_decidable``: how many datasets every model read has ``LD_T > LD_F`` on;
* ``ld_gap``: the smallest ``mean LD_T - mean LD_F`` over those models and datasets (all
  datasets when none is decidable);
* ``min_pairs``: the fewest statement pairs of a judged dataset;
* ``fact_to_offset`` (cross-model claims, :func:`offset_quantities`): the smallest, over the
  judged datasets and the patch directions the claim reads, of the target's TRUE/FALSE gap over
  the offset between the two models' readouts. A cross-model patch moves a cell by the fact
  *and* by the model difference; where the second is the larger, the map's min-max range and
  ``R`` are set by the offset, not by the fact. Unlike ``LD_T <= LD_F`` (a sign, the definition
  of ``R``), its floor is a threshold (thresholds.yaml) that measures do not see, so no dataset
  is left out for it here: one such dataset among the judged ones makes the cell INCONCLUSIVE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from mechtests.claims.model import Claim, Figure, Measurement, higher_is_better
from mechtests.measures.knowledge.runs import (
    N_BOOT,
    KnowledgeRun,
    ensure_maps,
    knowledge_datasets,
    knowledge_run,
    seed_for,
)
from mechtests.methods.heatmaps import normalize
from mechtests.methods.stats import bootstrap_interval

if TYPE_CHECKING:
    from mechtests.measures.context import FamilyContext

__all__ = ["Pair", "Stat", "caveat", "fact_to_offset", "finite", "heatmap_figures",
           "judge_datasets", "ld_gap", "offset_quantities", "split_decidable", "unique_figures"]

Stat = Callable[[KnowledgeRun, np.ndarray], float]
Pair = tuple[str, str]


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def ld_gap(run: KnowledgeRun, models: Iterable[str]) -> float:
    """The smallest clean ``mean LD_T - mean LD_F`` of ``models`` on ``run``'s pairs."""
    return min(float(run.ld_true[m].mean() - run.ld_false[m].mean()) for m in models)


def fact_to_offset(run: KnowledgeRun, source: str, target: str) -> float:
    """How far the fact moves ``target``'s readout against how far swapping in ``source``'s
    activations does: ``(mean LD_T - mean LD_F of target) / |mean LD_F(source) - mean
    LD_F(target)|``. The denominator is what ``source``'s FALSE run restores at the readout cell
    (where the models share the unembedding): the model difference alone. Infinite for two models
    that read out alike and rate TRUE above FALSE."""
    gap = float(run.ld_true[target].mean() - run.ld_false[target].mean())
    offset = abs(float(run.ld_false[source].mean() - run.ld_false[target].mean()))
    if offset > 0:
        return gap / offset
    return math.inf if gap > 0 else -math.inf if gap < 0 else math.nan


def offset_quantities(runs: Iterable[KnowledgeRun], judged: Iterable[KnowledgeRun],
                      directions: Iterable[Pair]) -> dict[str, Any]:
    """``fact_to_offset``: the worst :func:`fact_to_offset` over the ``(source, target)``
    ``directions`` on each dataset, and the smallest of those over the ``judged`` datasets; per
    dataset (every one in ``runs``) with the model offset it is compared with."""
    directions = list(directions)
    by_dataset = {r.dataset: min(fact_to_offset(r, s, t) for s, t in directions) for r in runs}
    offsets = {r.dataset: max(abs(float(r.ld_false[s].mean() - r.ld_false[t].mean()))
                              for s, t in directions) for r in runs}
    worst = [by_dataset[r.dataset] for r in judged]
    return {"fact_to_offset": min(worst) if worst else math.nan,
            "fact_to_offset_by_dataset": by_dataset, "model_offset_by_dataset": offsets}


def split_decidable(runs: Iterable[KnowledgeRun], models: Iterable[str]
                    ) -> tuple[list[KnowledgeRun], dict[str, str], dict[str, Any]]:
    """``(decidable runs, excluded dataset -> reason, precondition quantities)``."""
    models = list(dict.fromkeys(models))
    runs = list(runs)
    kept: list[KnowledgeRun] = []
    excluded: dict[str, str] = {}
    gaps = {run.dataset: ld_gap(run, models) for run in runs}
    for run in runs:
        worst = min(models, key=lambda m: float(run.ld_true[m].mean() - run.ld_false[m].mean()))
        if gaps[run.dataset] > 0:
            kept.append(run)
        else:
            excluded[run.dataset] = (
                f"{worst} rates FALSE statements above TRUE ones (mean LD_T - LD_F = "
                f"{gaps[run.dataset]:.3g}): the map's informative cells are its lowest")
    judged = kept or runs
    quantities = {
        "datasets_decidable": len(kept),
        "ld_gap": min(gaps[r.dataset] for r in judged),
        "min_pairs": min(r.n for r in judged),
        "ld_gap_by_dataset": gaps,
    }
    return kept, excluded, quantities


def caveat(excluded: dict[str, str]) -> str:
    return "; ".join(f"{d} not judged: {why}" for d, why in excluded.items())


def judge_datasets(
    ctx: FamilyContext,
    claim: Claim,
    pair: Pair,
    op: str,
    keys: list[Pair],
    metric: Stat,
    control: Stat,
    control_label: str,
    extra: Callable[[KnowledgeRun], dict[str, Any]] | None = None,
    interval: bool = True,
    worst_by: str = "metric",
    needs_order: bool = True,
    offset_directions: Iterable[Pair] = (),
) -> Measurement:
    """Each dataset's metric, control and bootstrap interval; the worst decidable dataset is
    reported: the one with the weakest metric bound (``worst_by="metric"``), or with the
    smallest gap between metric and control in the claim's direction (``"contrast"``, for
    metrics that sit at float noise on every dataset, where the weakest metric would be picked
    by rounding). ``needs_order=False``: every dataset is decidable (a check that holds for any
    sign of ``LD_T - LD_F``, such as self-patching the readout cell). ``offset_directions``:
    the cross-model patches ``(source, target)`` whose :func:`offset_quantities` are reported."""
    n_boot = int(claim.params.get("n_boot", N_BOOT))
    runs = [knowledge_run(ctx, d) for d in knowledge_datasets(ctx, claim.params.get("datasets"))]
    rows: dict[str, dict[str, Any]] = {}
    figures: list[Figure] = []
    for run in runs:
        ensure_maps(ctx, run, keys)
        full = np.arange(run.n)
        ci = None
        if interval:
            ci = bootstrap_interval(lambda idx, run=run: metric(run, idx), n=run.n,
                                    n_boot=n_boot, seed=seed_for(ctx, claim.id, run.dataset))
        rows[run.dataset] = {
            "metric": metric(run, full), "control": control(run, full), "interval": ci,
            "n": run.n, "engines": dict(run.engines), **(extra(run) if extra else {}),
        }
        figures.extend(heatmap_figures(ctx, run, pair, claim.area))
    targets = [t for _, t in keys]
    kept, excluded, quantities = split_decidable(runs, targets)
    if not needs_order:
        kept, excluded = runs, {}
        quantities["datasets_decidable"] = len(runs)
    offset_directions = list(offset_directions)
    if offset_directions:
        quantities.update(offset_quantities(runs, kept or runs, offset_directions))

    higher = higher_is_better(op)

    def bound(row: dict[str, Any]) -> float:
        ci = row["interval"]
        value = row["metric"] if ci is None or not finite(ci[0 if higher else 1]) \
            else ci[0 if higher else 1]
        return value if finite(value) else (-math.inf if higher else math.inf)

    def contrast(row: dict[str, Any]) -> float:
        gap = bound(row) - row["control"] if higher else row["control"] - bound(row)
        return gap if finite(gap) else -math.inf

    judged = [r.dataset for r in (kept or runs)]
    if worst_by == "contrast":
        worst = min(judged, key=lambda d: contrast(rows[d]))
    else:
        worst = (min if higher else max)(judged, key=lambda d: bound(rows[d]))
    row = rows[worst]
    details: dict[str, Any] = {**quantities, "dataset": worst, "datasets": rows,
                               "pair": list(pair), "excluded": excluded}
    if excluded:
        details["caveat"] = caveat(excluded)
    return Measurement(
        metric=float(row["metric"]),
        control=float(row["control"]),
        control_label=control_label,
        interval=row["interval"],
        n=int(row["n"]),
        details=details,
        figures=unique_figures(figures),
    )


def heatmap_figures(ctx: FamilyContext, run: KnowledgeRun, pair: Pair, area: str
                    ) -> list[Figure]:
    """The normalised heatmaps of ``pair`` on ``run`` (self maps, or ref -> post beside post's
    own for the cross-model area), built once; none when a map is missing."""
    ref, post = pair
    kind = "cross" if area == "crossmodel" else "self"
    keys = [(ref, post), (post, post)] if kind == "cross" else [(ref, ref), (post, post)]

    if any(k not in run.maps for k in keys):  # not memoised: the maps may come later
        return []

    def build() -> list[Figure]:
        a, b = normalize(run.heat(keys[0])), normalize(run.heat(keys[1]))
        label = {(ref, ref): ref, (post, post): post, (ref, post): f"{ref} -> {post}"}
        path = ctx.artifact(f"knowledge/{run.dataset}_{kind}_{ref}_{post}.png")
        return [Figure("knowledge.heatmaps", str(path), {
            "panels": [(label[keys[0]], a), (label[keys[1]], b), ("difference", a - b)],
            "columns": run.columns,
            "title": f"{ctx.family.name} {run.dataset}: normalised patching heatmaps "
                     f"(n = {run.n} pairs)",
        })]

    return ctx.memo(f"knowledge:plot:{run.dataset}:{kind}:{ref}:{post}", build)


def unique_figures(figures: Iterable[Figure]) -> tuple[Figure, ...]:
    """``figures`` in order, one per path."""
    by_path: dict[str, Figure] = {}
    for figure in figures:
        by_path.setdefault(figure.path, figure)
    return tuple(by_path.values())
