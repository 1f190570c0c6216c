"""Truthfulness claims (Du et al. 2025 claim 3; Du et al. 2025 claim 3): shared direction, transfer.

Measures for T1-T6 of docs/claims.md (claim 3), on a pair ``(ref, post)`` (``ref`` is the base):

=================================  ==============================================================
claim id                           metric
=================================  ==============================================================
``truth.direction.cosine``         T1: ``cos(d_ref, d_post)`` at ``probe_layer``
``truth.direction.beats_refusal``  T2: ``cos_truth(ref, post) - cos_refusal(ref, post)``
``truth.probe.transfer_accuracy``  T3: held-out accuracy of the ref probe on post activations
``truth.probe.transfer_gap``       T3: that accuracy minus the post model's own probe's
``truth.steering.forward_effect``  T4: ``IE(ref -> post)``
``truth.steering.*_ratio``         T4/T5: ``IE(src -> model) / IE(model -> model)``
``truth.steering.random_control``  T6: ``IE(random -> post)``, random vectors of norm ``|v_ref|``
=================================  ==============================================================

Controls: the independently trained control base where the family has one (its direction,
probe or steering vector in place of the base's: unrelated models share nothing by chance),
else random directions (the analytic ``|cos|`` quantile for T1, a probe on a random direction
for T3, random steering vectors for T4/T5). Intervals are percentile bootstraps over statements
(training statements for cosines, held-out statements for accuracies and effects; true and
false statements resampled separately for effects). The arithmetic is in
:mod:`mechtests.methods`; the data and model visits in :mod:`mechtests.measures.truth.runs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mechtests.claims.model import Claim, Figure, Measurement
from mechtests.measures import measure
from mechtests.measures.truth.runs import (
    N_BOOT,
    N_RANDOM,
    RoleTruth,
    SteeringRun,
    role_truth,
    seed_for,
    steering,
)
from mechtests.methods.directions import cosine, cosine_by_layer, cosine_interval
from mechtests.methods.probes import ProjectionLRProbe, accuracy, correct, make_probe
from mechtests.methods.stats import (
    bootstrap_interval,
    random_cosine_quantile,
    random_unit_directions,
)
from mechtests.methods.steering import effect_from_arrays

if TYPE_CHECKING:
    import torch

    from mechtests.measures.context import FamilyContext

NULL_LEVEL = 0.95  # quantile of the random-direction |cos| null
MIN_OWN_IE = 0.1  # ours: floor of the own-vector IE in the T4/T5 ratios' denominators


def truth_directions(ctx: FamilyContext) -> dict[str, torch.Tensor]:
    """Every role's truth direction ``mu_T - mu_F`` (float64, unnormalised) at ``probe_layer``.

    Public: the refusal area compares it with the refusal direction (its claim R2).
    """
    layer = ctx.family.truth.probe_layer
    return {role: rt.directions[layer] for role, rt in role_truth(ctx).items()}


def _control_role(ctx: FamilyContext, pair: tuple[str, str]) -> str | None:
    return "control" if ctx.family.has_control and "control" not in pair else None


# -- T1, T2: directions -------------------------------------------------------------------------
def _cosine_figure(ctx: FamilyContext, roles: dict[str, RoleTruth], ref: str) -> Figure:
    curves = {f"{ref}-{other}": cosine_by_layer(roles[ref].directions, roles[other].directions)
              for other in roles if other != ref}
    null = random_cosine_quantile(roles[ref].d_model, NULL_LEVEL)
    return Figure("truth.cosine_by_layer", str(ctx.artifact(f"truth_cosine_by_layer_{ref}.png")),
                  {"curves": curves, "probe_layer": ctx.family.truth.probe_layer, "null": null})


@measure("truth.direction.cosine")
def direction_cosine(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """T1: the truth directions of ``ref`` and ``post`` at ``probe_layer`` point the same way."""
    ref, post = pair
    roles, t = role_truth(ctx), ctx.family.truth
    layer = t.probe_layer
    metric = cosine(roles[ref].directions[layer], roles[post].directions[layer])
    (a, labels), (b, _) = roles[ref].split(t.train_datasets), roles[post].split(t.train_datasets)
    interval = cosine_interval(a, b, labels, n_boot=N_BOOT, seed=seed_for(ctx, claim.id, pair))
    null = random_cosine_quantile(roles[ref].d_model, NULL_LEVEL)
    control_role = _control_role(ctx, pair)
    if control_role:
        control = cosine(roles[ref].directions[layer], roles[control_role].directions[layer])
        label = f"cos({ref}, control base)"
    else:
        control, label = null, f"random directions, |cos| q{NULL_LEVEL:.2f} (d={a.shape[1]})"
    details = {
        "layer": layer,
        "by_layer": cosine_by_layer(roles[ref].directions, roles[post].directions),
        "random_null_q95": null,
        "n_train": int(a.shape[0]),
    }
    if control_role:
        details["control_by_layer"] = cosine_by_layer(roles[ref].directions,
                                                      roles[control_role].directions)
    return Measurement(metric, control, label, interval, int(a.shape[0]), details,
                       figures=(_cosine_figure(ctx, roles, ref),))


@measure("truth.direction.beats_refusal")
def direction_vs_refusal(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """T2: the truth direction is much more shared than the refusal direction (claims 3 vs 4)."""
    from mechtests.measures.refusal.runs import refusal_directions

    ref, post = pair
    roles, t = role_truth(ctx), ctx.family.truth
    refusal = refusal_directions(ctx)
    layer = t.probe_layer
    truth_cos = cosine(roles[ref].directions[layer], roles[post].directions[layer])
    refusal_cos = cosine(refusal[ref], refusal[post])
    (a, labels), (b, _) = roles[ref].split(t.train_datasets), roles[post].split(t.train_datasets)
    lo, hi = cosine_interval(a, b, labels, n_boot=N_BOOT, seed=seed_for(ctx, claim.id, pair))
    control_role = _control_role(ctx, pair)
    if control_role and control_role in refusal:
        control = (cosine(roles[ref].directions[layer], roles[control_role].directions[layer])
                   - cosine(refusal[ref], refusal[control_role]))
        label = "same difference with the control base"
    else:
        control, label = 0.0, "unrelated directions (both cosines ~0)"
    details = {"truth_cos": truth_cos, "refusal_cos": refusal_cos, "truth_layer": layer,
               "refusal_layer": ctx.family.refusal.layer,
               "interval_note": "bootstrap over truth statements; refusal direction held fixed"}
    return Measurement(truth_cos - refusal_cos, control, label,
                       (lo - refusal_cos, hi - refusal_cos), int(a.shape[0]), details)


# -- T3: probes ---------------------------------------------------------------------------------
def _probe_setup(ctx: FamilyContext, claim: Claim) -> tuple[str, tuple[str, ...], str]:
    """``(probe kind, training datasets, held-out dataset)``; ``params.heldout`` selects
    leave-one-dataset-out over the family's training datasets plus its held-out one."""
    t = ctx.family.truth
    kind = str(claim.params.get("probe", "mm_lr"))
    heldout = str(claim.params.get("heldout", t.heldout_dataset))
    universe = (*t.train_datasets, t.heldout_dataset)
    if heldout not in universe:
        raise ValueError(f"{claim.id}: heldout {heldout!r} is not one of {universe}")
    return kind, tuple(d for d in universe if d != heldout), heldout


def _probes(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> dict[str, Any]:
    kind, train, heldout = _probe_setup(ctx, claim)
    return ctx.memo(f"truth.probes:{kind}:{heldout}:{pair[0]}:{pair[1]}",
                    lambda: _fit_probes(ctx, pair, kind, train, heldout))


def _fit_probes(ctx: FamilyContext, pair: tuple[str, str], kind: str, train: tuple[str, ...],
                heldout: str) -> dict[str, Any]:
    ref, post = pair
    roles = role_truth(ctx)
    probes = {role: make_probe(kind).fit(*rt.split(train)) for role, rt in roles.items()}
    test_acts, test_labels = roles[post].split((heldout,))
    hits = {role: correct(p, test_acts, test_labels) for role, p in probes.items()}
    control_role = _control_role(ctx, pair)
    if control_role:
        control_hits, label = hits[control_role], f"{kind} probe of the control base"
    else:
        d = roles[ref].d_model
        rand = random_unit_directions(1, d, seed=seed_for(ctx, "truth.probe.random"))[0]
        control_probe = ProjectionLRProbe(direction=rand).fit(*roles[ref].split(train))
        control_hits = correct(control_probe, test_acts, test_labels)
        label = "random-direction probe"
    tests = {role: rt.split((heldout,)) for role, rt in roles.items()}
    matrix = {(src, dst): accuracy(probe, *tests[dst]) for src, probe in probes.items()
              for dst in tests}
    figure = Figure("truth.transfer_matrix",
                    str(ctx.artifact(f"truth_probe_transfer_{kind}_{heldout}.png")),
                    {"matrix": matrix, "roles": list(roles)})
    details = {
        "probe": kind, "train_datasets": list(train), "heldout": heldout,
        "acc_ref_on_ref": matrix[(ref, ref)], "acc_post_on_post": matrix[(post, post)],
        "acc_ref_on_post": matrix[(ref, post)], "acc_post_on_ref (backward)": matrix[(post, ref)],
        "transfer_matrix": {f"{a}->{b}": v for (a, b), v in matrix.items()},
    }
    return {"hits": hits, "control_hits": control_hits, "label": label, "details": details,
            "figure": figure, "n": int(test_labels.shape[0])}


@measure("truth.probe.transfer_accuracy")
def probe_transfer_accuracy(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]
                            ) -> Measurement:
    """T3: a probe trained on ``ref`` classifies ``post``'s held-out statements."""
    ref = pair[0]
    p = _probes(ctx, claim, pair)
    hits = p["hits"][ref]
    interval = bootstrap_interval(hits, n_boot=N_BOOT, seed=seed_for(ctx, claim.id, pair))
    return Measurement(float(hits.mean()), float(p["control_hits"].mean()), p["label"], interval,
                       p["n"], p["details"], figures=(p["figure"],))


@measure("truth.probe.transfer_gap")
def probe_transfer_gap(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """T3: the ref probe is nearly as accurate on ``post`` as ``post``'s own probe."""
    ref, post = pair
    p = _probes(ctx, claim, pair)
    diff = p["hits"][ref] - p["hits"][post]
    control = float((p["control_hits"] - p["hits"][post]).mean())
    interval = bootstrap_interval(diff, n_boot=N_BOOT, seed=seed_for(ctx, claim.id, pair))
    return Measurement(float(diff.mean()), control, f"gap of the {p['label']}", interval, p["n"],
                       p["details"], figures=(p["figure"],))


# -- T4-T6: steering ----------------------------------------------------------------------------
IEFn = Callable[[str], float]


def _point(run: SteeringRun, stat: Callable[[IEFn], float]) -> float:
    """``stat(ie)`` where ``ie(vector)`` is the average IE of ``vector`` on ``run``'s model."""
    return stat(lambda vec: run.result.effect(vec).average)


def _steer_stat(run: SteeringRun, stat: Callable[[IEFn], float], seed: int
                ) -> tuple[float, tuple[float, float]]:
    """:func:`_point` and its interval (true and false statements resampled separately, every
    vector on the same resample)."""
    res = run.result

    def resampled(i: np.ndarray, j: np.ndarray) -> float:
        def ie(vec: str) -> float:
            return effect_from_arrays(res.true_none[i], res.true_subtract[vec][i],
                                      res.false_none[j], res.false_add[vec][j]).average
        return stat(ie)

    interval = bootstrap_interval(resampled, n=(run.n_true, run.n_false), n_boot=N_BOOT, seed=seed)
    return _point(run, stat), interval


def _ratio(num: float, own: float) -> float:
    """``num / max(own, MIN_OWN_IE)``: a model whose own vector barely steers it gives no
    ratio near 1 by dividing two near-zero effects."""
    return num / max(own, MIN_OWN_IE)


def _random_mean(ie: IEFn) -> float:
    return float(np.mean([ie(f"random{k}") for k in range(N_RANDOM)]))


def _control_vector(ctx: FamilyContext, pair: tuple[str, str]) -> tuple[Callable[[IEFn], float],
                                                                         str]:
    role = _control_role(ctx, pair)
    if role:
        return (lambda ie: ie(role)), "control base's vector"
    return _random_mean, f"{N_RANDOM} random vectors of norm |v_{pair[0]}|"


def _steer_details(run: SteeringRun, vectors: tuple[str, ...]) -> dict[str, Any]:
    res = run.result
    out: dict[str, Any] = {
        "model": run.model, "positions": run.positions, "n_true": run.n_true,
        "n_false": run.n_false, "p_diff_true_none": float(res.true_none.mean()),
        "p_diff_false_none": float(res.false_none.mean()),
        # the precondition of every steering claim (thresholds.yaml): the model's own vector
        # steers it, so a transfer effect (or its absence) can be read at all
        "own_ie": res.effect(run.model).average if run.model in res.true_subtract
        else float("nan"),
    }
    for vec in vectors:
        ie, nie = res.effect(vec), res.effect(vec, normalised=True)
        out[vec] = {"ie_t2f": ie.true_to_false, "ie_f2t": ie.false_to_true, "ie": ie.average,
                    "nie": nie.average, "norm": run.norms[vec]}
    return out


def _all_vectors(run: SteeringRun) -> tuple[str, ...]:
    return tuple(run.result.true_subtract)


@measure("truth.steering.forward_effect")
def steering_effect(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """T4: the ref model's truth vector flips ``post``'s TRUE/FALSE judgements."""
    ref, post = pair
    run = steering(ctx)[post]
    seed = seed_for(ctx, claim.id, pair)
    metric, interval = _steer_stat(run, lambda ie: ie(ref), seed)
    control_stat, label = _control_vector(ctx, pair)
    control = _point(run, control_stat)
    return Measurement(metric, control, label, interval, run.n_true + run.n_false,
                       _steer_details(run, _all_vectors(run)))


@measure("truth.steering.forward_ratio", "truth.steering.backward_ratio")
def steering_ratio(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """T4 (``params.direction: forward``): ``IE(ref -> post) / IE(post -> post)``;
    T5 (``backward``): ``IE(post -> ref) / IE(ref -> ref)``. The denominator is floored at
    :data:`MIN_OWN_IE` (ours; the paper's own effects are 0.83-0.88)."""
    ref, post = pair
    direction = str(claim.params.get("direction", "forward"))
    if direction not in ("forward", "backward"):
        raise ValueError(f"{claim.id}: params.direction must be forward or backward")
    source, model = (ref, post) if direction == "forward" else (post, ref)
    run = steering(ctx)[model]
    seed = seed_for(ctx, claim.id, pair)
    metric, interval = _steer_stat(run, lambda ie: _ratio(ie(source), ie(model)), seed)
    control_stat, label = _control_vector(ctx, pair)
    control = _point(run, lambda ie: _ratio(control_stat(ie), ie(model)))
    details = {"direction": direction, "source": source, "own": model,
               "min_own_ie": MIN_OWN_IE,
               **_steer_details(run, _all_vectors(run))}
    return Measurement(metric, control, f"ratio with the {label}", interval,
                       run.n_true + run.n_false, details)


@measure("truth.steering.random_control")
def steering_random(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """T6: random vectors with the norm of the ref vector barely move ``post``."""
    ref, post = pair
    run = steering(ctx)[post]
    seed = seed_for(ctx, claim.id, pair)
    metric, interval = _steer_stat(run, _random_mean, seed)
    control = _point(run, lambda ie: ie(ref))
    return Measurement(metric, control, f"IE of the {ref} vector", interval,
                       run.n_true + run.n_false, _steer_details(run, _all_vectors(run)))

