"""Refusal claims R1-R8 (Du et al. 2025 claim 4; docs/claims.md (claim 4)): measure functions.

Post-training rewrites the refusal direction: the base and post directions have a low cosine
(R1), lower than the truth directions' (R2); the post model's own direction removes refusal when
ablated (R3) and induces it when added (R4); the base direction steers the post model much less
than the post model's own (limited forward transfer, R5 addition, R6 ablation); the post
direction steers the base model (backward transfer, R7 addition, R8 ablation).

Directions come from the training prompts, refusal rates from the held-out test prompts
(greedy, 16 new tokens), all through :mod:`mechtests.measures.refusal.runs` so every model is loaded
once per phase. Every measurement carries a control:

* R1: the split-half cosine of the post direction (two disjoint halves of the prompts): the
  cosine a re-estimate of the *same* direction reaches, so a low cross-model cosine is not
  estimation noise.
* R3, R4, R7, R8: the same intervention with a random unit direction and, on families with a
  control base, with the control base's direction; the null closest to the metric is the control.
* R5: the gap left by the post model's own direction re-estimated on half the prompts.
* R6: the post model's own direction (the transfer must leave much more refusal than it).

The ablation claims (R3, R6, R8) also report ``random_ablation_kept``: the share of the
intervened model's harmful refusals that a random direction ablated at every layer leaves.
Where the all-layer projection itself wrecks the model (Gemma-3-270M: a random direction removes
every refusal and the generations turn to noise), no ablation can be read as removing refusal;
``thresholds.yaml`` makes that a precondition, so such a cell is INCONCLUSIVE, not a FAIL.

Intervals are percentile bootstraps over prompts
(:func:`mechtests.methods.stats.bootstrap_interval`), paired where two conditions share the
prompts. Both refusal scorers are recorded (claim param ``scorer`` picks the judged one:
``paper`` by default, or ``substring``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mechtests.claims.model import Figure, Measurement
from mechtests.measures import measure
from mechtests.measures.refusal.runs import (
    MAX_NEW_TOKENS,
    Condition,
    direction_for,
    flags,
    generations,
    refusal_directions,
    scorers,
    train_activations,
)
from mechtests.methods.directions import cosine
from mechtests.methods.refusal import bootstrap_cosine, split_half_directions
from mechtests.methods.stats import bootstrap_interval

if TYPE_CHECKING:
    from mechtests.claims.model import Claim
    from mechtests.measures.context import FamilyContext

__all__ = ["random_ablation_kept", "refusal_directions"]

N_BOOT = 1000
# The selection sweep reported beside R3 scores candidate sites by ablation; it runs only where
# ablating a random direction at every layer keeps this share of the refusals (the ablation
# claims' precondition in thresholds.yaml), else its scores measure the damage, not the site.
SWEEP_MIN_RANDOM_ABLATION_KEPT = 0.5
HARMFUL, HARMLESS = "harmful_test", "harmless_test"


def _scorer(claim: Claim) -> str:
    return str(claim.params.get("scorer", "paper"))


def _nulls(ctx: FamilyContext, model: str) -> dict[str, str]:
    """Null direction sources for ``model``: label -> source."""
    out = {"random direction": "random"}
    if ctx.family.has_control and model != "control":
        out["control-base direction"] = "control"
    return out


def _rate(ctx: FamilyContext, model: str, cond: Condition, scorer: str) -> float:
    return float(flags(ctx, model, cond, scorer).mean())


def random_ablation_kept(ctx: FamilyContext, model: str, scorer: str) -> float:
    """Share of ``model``'s refusals on the harmful test prompts that survive ablating a random
    unit direction at every layer (NaN when it refuses none): near 1 when the all-layer
    projection leaves the model intact, near 0 when the projection itself wrecks it (then no
    ablation, the refusal direction's included, can be read as removing refusal)."""
    before = _rate(ctx, model, Condition("baseline", HARMFUL), scorer)
    after = _rate(ctx, model, Condition("ablation", HARMFUL, "random"), scorer)
    return after / before if before > 0 else float("nan")


def _ratio(after: np.ndarray, before: np.ndarray) -> Callable[[np.ndarray], float]:
    def stat(i: np.ndarray) -> float:
        denom = before[i].mean()
        return float(after[i].mean() / denom) if denom > 0 else float("nan")

    return stat


def _rates_table(ctx: FamilyContext, pair: tuple[str, str]) -> dict[str, dict[str, float]]:
    """Scorer -> condition name -> rate, for both models of ``pair``."""
    table: dict[str, dict[str, float]] = {}
    for scorer in scorers(ctx):
        rows: dict[str, float] = {}
        for model in pair:
            for name in generations(ctx, model):
                kind, source, split = name.split("/")
                rows[f"{model}:{name}"] = _rate(ctx, model, Condition(kind, split,
                                                "" if source == "none" else source), scorer)
        table[scorer] = rows
    return table


def _figure(ctx: FamilyContext, pair: tuple[str, str], scorer: str) -> Figure:
    """The bar chart of ``pair`` (built once per pair and scorer)."""

    def build() -> Figure:
        ref, post = pair
        panels: dict[str, dict[str, dict[str, float]]] = {}
        for model, other in ((post, ref), (ref, post)):
            bars = {"own": model, "transferred": other, "random": "random"}
            if ctx.family.has_control and model != "control":
                bars["control base"] = "control"
            groups: dict[str, dict[str, float]] = {
                "baseline (harmful)": {"none": _rate(ctx, model, Condition("baseline", HARMFUL),
                                                     scorer)},
                "baseline (harmless)": {"none": _rate(ctx, model,
                                                      Condition("baseline", HARMLESS), scorer)},
            }
            for kind, split in (("ablation", HARMFUL), ("addition", HARMLESS)):
                groups[f"{kind} ({split.split('_')[0]})"] = {
                    label: _rate(ctx, model, Condition(kind, split, src), scorer)
                    for label, src in bars.items()
                }
            panels[model] = groups
        path = ctx.artifact(f"refusal_rates_{ref}_{post}_{scorer}.png")
        return Figure("refusal.rates", str(path), {
            "panels": panels,
            "title": f"{ctx.family.name}: refusal rates, {ref} / {post} "
                     f"({scorer} scorer, {MAX_NEW_TOKENS} tokens)"})

    return ctx.memo(f"refusal.plot.{pair[0]}.{pair[1]}.{scorer}", build)


def _samples(ctx: FamilyContext, model: str, cond: Condition, k: int = 3) -> list[str]:
    return generations(ctx, model)[cond.name][:k]


def _intervention(
    ctx: FamilyContext,
    claim: Claim,
    pair: tuple[str, str],
    metric: float,
    interval: tuple[float, float],
    control: tuple[float, str],
    n: int,
    extra: dict[str, Any],
) -> Measurement:
    scorer = _scorer(claim)
    details = {"scorer": scorer, "layer": ctx.family.refusal.layer,
               "hooks": list(ctx.family.refusal.hooks), "max_new_tokens": MAX_NEW_TOKENS,
               "rates": _rates_table(ctx, pair), **extra}
    return Measurement(metric=metric, control=control[0], control_label=control[1],
                       interval=interval, n=n, details=details,
                       figures=(_figure(ctx, pair, scorer),))


def _hardest_null(ctx: FamilyContext, model: str, values: Callable[[str], float],
                  geq: bool) -> tuple[float, str, dict[str, float]]:
    """The null closest to passing: max for ``>=`` claims, min for ``<=`` claims."""
    found = {label: values(src) for label, src in _nulls(ctx, model).items()}
    label = (max if geq else min)(found, key=lambda k: found[k])
    return found[label], label, found


# -- R1, R2: directions ------------------------------------------------------------------------


@measure("refusal.direction.low_cosine")
def direction_cosine(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R1: ``cos(r_ref, r_post)`` at the family's layer; control: split-half cos of ``r_post``."""
    ref, post = pair
    dirs = refusal_directions(ctx)
    acts_ref, acts_post = train_activations(ctx, ref), train_activations(ctx, post)
    cos = cosine(dirs[ref], dirs[post])
    interval = bootstrap_cosine(acts_ref, acts_post, n_boot=N_BOOT, seed=ctx.options.seed)
    half_post = cosine(*split_half_directions(*acts_post, seed=ctx.options.seed))
    half_ref = cosine(*split_half_directions(*acts_ref, seed=ctx.options.seed))
    details: dict[str, Any] = {
        "layer": ctx.family.refusal.layer,
        "positions": {r: ctx.family.refusal.positions[r] for r in pair},
        "split_half_cos_ref": half_ref,
        "cos_post_random": cosine(dirs[post], direction_for(ctx, "random")),
        "n_harmful_train": int(acts_post[0].shape[0]),
        "n_harmless_train": int(acts_post[1].shape[0]),
    }
    if ctx.family.has_control:
        details["cos_ref_control"] = cosine(dirs[ref], dirs["control"])
        details["cos_post_control"] = cosine(dirs[post], dirs["control"])
    return Measurement(metric=cos, control=half_post,
                       control_label="split-half cos of the post direction", interval=interval,
                       n=int(acts_post[0].shape[0] + acts_post[1].shape[0]), details=details)


@measure("refusal.direction.below_truth")
def cosine_below_truth(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R2: ``cos_truth(ref, post) - cos_refusal(ref, post)``; control: the same gap between the
    reference and the control base (or a random direction where there is none)."""
    from mechtests.measures.truth.measures import (
        truth_directions,  # the truth area's public function
    )

    ref, post = pair
    refusal, truth = refusal_directions(ctx), truth_directions(ctx)
    gap = cosine(truth[ref], truth[post]) - cosine(refusal[ref], refusal[post])
    lo, hi = bootstrap_cosine(train_activations(ctx, ref), train_activations(ctx, post),
                              n_boot=N_BOOT, seed=ctx.options.seed)
    truth_cos = cosine(truth[ref], truth[post])
    if ctx.family.has_control:
        null = (cosine(truth[ref], truth["control"]) - cosine(refusal[ref], refusal["control"]))
        label = "same gap, reference vs control base"
    else:
        rnd = direction_for(ctx, "random")
        null = cosine(truth[ref], rnd) - cosine(refusal[ref], rnd)
        label = "same gap with a random direction"
    return Measurement(
        metric=gap, control=null, control_label=label,
        interval=(truth_cos - hi, truth_cos - lo), n=None,
        details={"cos_truth": truth_cos, "cos_refusal": cosine(refusal[ref], refusal[post]),
                 "interval_note": "bootstrap over refusal prompts; truth cosine held fixed"},
    )


# -- R3, R4: the post model's own direction ---------------------------------------------------


@measure("refusal.ablation.own_post")
def own_ablation(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R3: refusal of ``post`` on harmful test prompts with its own direction ablated."""
    post, scorer = pair[1], _scorer(claim)
    f = flags(ctx, post, Condition("ablation", HARMFUL, post), scorer)
    null, label, found = _hardest_null(
        ctx, post, lambda s: _rate(ctx, post, Condition("ablation", HARMFUL, s), scorer), False)
    extra: dict[str, Any] = {
        "baseline": _rate(ctx, post, Condition("baseline", HARMFUL), scorer), "nulls": found,
        "random_ablation_kept": random_ablation_kept(ctx, post, scorer),
        "samples": _samples(ctx, post, Condition("ablation", HARMFUL, post))}
    if claim.params.get("sweep"):
        kept = extra["random_ablation_kept"]
        if isinstance(kept, float) and kept >= SWEEP_MIN_RANDOM_ABLATION_KEPT:
            from mechtests.measures.refusal.select import sweep

            extra["selection_sweep"] = sweep(ctx, post)
        else:  # no refusals to remove, or every ablation wrecks the model
            extra["selection_sweep"] = {
                "skipped": f"a random direction ablated at every layer keeps {kept:.3g} of the "
                f"refusals (needs >= {SWEEP_MIN_RANDOM_ABLATION_KEPT}; nan = none to keep), so "
                "ablation scores cannot rank candidate sites"}
    return _intervention(ctx, claim, pair, float(f.mean()), bootstrap_interval(f, N_BOOT),
                         (null, label), len(f), extra)


@measure("refusal.addition.own_post")
def own_addition(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R4: refusal of ``post`` on harmless test prompts with ``c r_post`` added."""
    post, scorer = pair[1], _scorer(claim)
    f = flags(ctx, post, Condition("addition", HARMLESS, post), scorer)
    null, label, found = _hardest_null(
        ctx, post, lambda s: _rate(ctx, post, Condition("addition", HARMLESS, s), scorer), True)
    return _intervention(ctx, claim, pair, float(f.mean()), bootstrap_interval(f, N_BOOT),
                         (null, label), len(f), {
                             "baseline": _rate(ctx, post, Condition("baseline", HARMLESS), scorer),
                             "coef": ctx.family.refusal.addition_coefs[post], "nulls": found,
                             "samples": _samples(ctx, post, Condition("addition", HARMLESS, post))})


# -- R5, R6: forward transfer (the reference direction on the post model) ---------------------


@measure("refusal.forward.addition")
def forward_addition(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R5: ``refusal(post + c r_post) - refusal(post + c r_ref)`` on harmless test prompts."""
    ref, post = pair
    scorer = _scorer(claim)
    own = flags(ctx, post, Condition("addition", HARMLESS, post), scorer)
    moved = flags(ctx, post, Condition("addition", HARMLESS, ref), scorer)
    half = flags(ctx, post, Condition("addition", HARMLESS, f"half:{post}"), scorer)
    diff = own - moved
    return _intervention(ctx, claim, pair, float(diff.mean()), bootstrap_interval(diff, N_BOOT),
                         (abs(float((own - half).mean())),
                          "gap to the post direction from half the prompts"), len(diff), {
                             "own": float(own.mean()), "transferred": float(moved.mean()),
                             "own_half": float(half.mean()),
                             "samples": _samples(ctx, post, Condition("addition", HARMLESS, ref))})


@measure("refusal.forward.ablation")
def forward_ablation(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R6: ``refusal(post, ablate r_ref) / refusal(post)`` on harmful test prompts."""
    ref, post = pair
    scorer = _scorer(claim)
    base = flags(ctx, post, Condition("baseline", HARMFUL), scorer)
    moved = flags(ctx, post, Condition("ablation", HARMFUL, ref), scorer)
    own = flags(ctx, post, Condition("ablation", HARMFUL, post), scorer)
    denom = base.mean()
    ratio = float(moved.mean() / denom) if denom > 0 else float("nan")
    own_ratio = float(own.mean() / denom) if denom > 0 else float("nan")
    return _intervention(ctx, claim, pair, ratio,
                         bootstrap_interval(_ratio(moved, base), N_BOOT, n=len(base)),
                         (own_ratio, "the post model's own direction"), len(base), {
                             "baseline": float(denom), "transferred": float(moved.mean()),
                             "own": float(own.mean()),
                             "random_ablation_kept": random_ablation_kept(ctx, post, scorer),
                             "samples": _samples(ctx, post, Condition("ablation", HARMFUL, ref))})


# -- R7, R8: backward transfer (the post direction on the reference model) --------------------


@measure("refusal.backward.addition")
def backward_addition(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R7: ``refusal(ref + c r_post) - refusal(ref)`` on harmless test prompts."""
    ref, post = pair
    scorer = _scorer(claim)
    base = flags(ctx, ref, Condition("baseline", HARMLESS), scorer)
    moved = flags(ctx, ref, Condition("addition", HARMLESS, post), scorer)
    diff = moved - base
    null, label, found = _hardest_null(ctx, ref, lambda s: float(
        (flags(ctx, ref, Condition("addition", HARMLESS, s), scorer) - base).mean()), True)
    return _intervention(ctx, claim, pair, float(diff.mean()), bootstrap_interval(diff, N_BOOT),
                         (null, label), len(diff), {
                             "baseline": float(base.mean()), "transferred": float(moved.mean()),
                             "coef": ctx.family.refusal.addition_coefs[ref], "nulls": found,
                             "samples": _samples(ctx, ref, Condition("addition", HARMLESS, post))})


@measure("refusal.backward.ablation")
def backward_ablation(ctx: FamilyContext, claim: Claim, pair: tuple[str, str]) -> Measurement:
    """R8: ``refusal(ref, ablate r_post) / refusal(ref)`` on harmful test prompts (NaN, with the
    reason in ``details``, when the reference model never refuses)."""
    ref, post = pair
    scorer = _scorer(claim)
    base = flags(ctx, ref, Condition("baseline", HARMFUL), scorer)
    moved = flags(ctx, ref, Condition("ablation", HARMFUL, post), scorer)
    denom = float(base.mean())

    def ratio_of(source: str) -> float:
        after = flags(ctx, ref, Condition("ablation", HARMFUL, source), scorer).mean()
        return float(after / denom) if denom > 0 else float("nan")

    null, label, found = _hardest_null(ctx, ref, ratio_of, False)
    extra: dict[str, Any] = {"baseline": denom, "transferred": float(moved.mean()),
                             "nulls": found,
                             "random_ablation_kept": random_ablation_kept(ctx, ref, scorer),
                             "samples": _samples(ctx, ref, Condition("ablation", HARMFUL, post))}
    if denom == 0:
        extra["note"] = f"{ref} refuses none of the harmful test prompts: nothing to ablate"
    return _intervention(ctx, claim, pair, ratio_of(post),
                         bootstrap_interval(_ratio(moved, base), N_BOOT, n=len(base)),
                         (null, label), len(base), extra)
