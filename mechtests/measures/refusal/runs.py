"""Orchestration of the refusal area: data, directions and every generation a model needs.

The refusal claims (:mod:`mechtests.measures.refusal.measures`) read everything from three
memoised pieces, so each model is loaded as few times as possible:

* :func:`refusal_directions` - every role's unit refusal direction at the family's layer and
  position, from cached training activations (one load per role, only on a cache miss). Exposed
  to other areas through the memo key ``"refusal.directions"`` (dict role -> float32 unit
  tensor ``[d_model]``, CPU).
* :func:`generations` - for one model role, *all* the conditions any refusal claim of the family
  needs (baselines, ablations and additions of its own, the paired models', a random and the
  control base's direction), generated in one visit: greedy, 16 new tokens, batched, on the
  held-out test prompts. Each condition is also cached on disk under
  ``<cache>/refusal/<model fingerprint>/`` so a second run generates nothing.
* :func:`splits` - the family's refusal splits, subsampled by ``ctx.subsample``.

The model run always uses its own template (paper code Refusal/utils.py and
extract_refusal_dir.py); the paper steers Tulu with a
template different from the one it extracted with, which we do not reproduce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechtests.data.refusal import RefusalSplits, format_prompts, load_refusal_splits
from mechtests.methods.interventions import ablation_hooks, addition_hooks
from mechtests.methods.refusal import refusal_direction, split_half_directions
from mechtests.methods.refusal_score import ARDITI_SUBSTRINGS, PAPER_PREFIXES, RefusalScorer
from mechtests.methods.stats import random_unit_directions
from mechtests.sites import site_name
from mechtests.store import read_checked, texts_problem, write_checked

if TYPE_CHECKING:
    from mechtests.engine.backend import Hook
    from mechtests.measures.context import FamilyContext

__all__ = [
    "MAX_NEW_TOKENS",
    "Condition",
    "direction_for",
    "flags",
    "generations",
    "pairs_in_use",
    "refusal_directions",
    "scorers",
    "splits",
    "train_activations",
]

MAX_NEW_TOKENS = 16  # paper code Refusal/apply_refusal_dir.py: greedy, max_tokens_generated=16
GEN_BATCH = 128  # prompts per generate call; rows are independent (left padding, greedy)
RANDOM_SEED_SALT = 5_000  # the random control direction uses seed options.seed + this
CODE_VERSION = "1"  # bump when generation or hooks change, to invalidate the disk cache


@dataclass(frozen=True, order=True)
class Condition:
    """One generation setting: ``kind`` (baseline | ablation | addition) of direction ``source``
    (a role, ``random``, or ``half:<role>`` = the role's direction from half the prompts) on the
    ``split`` prompts (``harmful_test`` | ``harmless_test``)."""

    kind: str
    split: str
    source: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.source or 'none'}/{self.split}"


def splits(ctx: FamilyContext) -> RefusalSplits:
    """The family's refusal splits, each list subsampled by ``ctx.subsample``."""

    def load() -> RefusalSplits:
        raw = load_refusal_splits(ctx.datasets)
        return RefusalSplits(*(tuple(ctx.subsample(list(getattr(raw, f)), salt=f"refusal.{f}"))
                               for f in ("harmful_train", "harmless_train", "harmful_test",
                                         "harmless_test")))

    return ctx.memo("refusal.splits", load)


def extraction_site(ctx: FamilyContext) -> str:
    """``blocks.L.hook_resid_pre`` at the family's refusal layer."""
    return site_name(ctx.family.refusal.layer, "hook_resid_pre")


def train_activations(ctx: FamilyContext, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(harmful [n, d], harmless [m, d])`` of ``role`` at its extraction site and position."""

    def collect() -> tuple[torch.Tensor, torch.Tensor]:
        settings, data, site = ctx.family.refusal, splits(ctx), extraction_site(ctx)
        out = []
        for name in ("harmful_train", "harmless_train"):
            prompts = format_prompts(settings.templates[role], getattr(data, name))
            acts = ctx.activations(role, prompts, [site], [settings.positions[role]],
                                   tag=f"refusal-{name}")
            out.append(acts[site][:, 0].to(torch.float64))
        return out[0], out[1]

    return ctx.memo(f"refusal.train_acts.{role}", collect)


def refusal_directions(ctx: FamilyContext) -> dict[str, torch.Tensor]:
    """Every role's unit refusal direction (float32, CPU) at the family's layer: memo
    ``"refusal.directions"``."""

    def compute() -> dict[str, torch.Tensor]:
        site = extraction_site(ctx)
        return {role: refusal_direction(*train_activations(ctx, role), where=f"{role} {site}")
                .to(torch.float32) for role in ctx.family.roles}

    return ctx.memo("refusal.directions", compute)


def direction_for(ctx: FamilyContext, source: str) -> torch.Tensor:
    """The unit direction called ``source`` (a role, ``random``, ``half:<role>``)."""
    dirs = refusal_directions(ctx)
    if source == "random":
        d = next(iter(dirs.values())).shape[0]
        seed = ctx.options.seed + RANDOM_SEED_SALT
        return ctx.memo("refusal.random_direction",
                        lambda: random_unit_directions(1, d, seed=seed)[0].to(torch.float32))
    if source.startswith("half:"):
        role = source.split(":", 1)[1]
        halves = ctx.memo(f"refusal.halves.{role}", lambda: split_half_directions(
            *train_activations(ctx, role), seed=ctx.options.seed))
        return halves[1].to(torch.float32)
    return dirs[source]


def pairs_in_use(ctx: FamilyContext) -> list[tuple[str, str]]:
    """The ``(reference, post)`` pairs of the refusal claims that exist in this family."""
    from mechtests.claims.table import load_claims

    roles = set(ctx.family.roles)
    found = {pair for claim in load_claims() if claim.area == "refusal" for pair in claim.pairs
             if set(pair) <= roles}
    return sorted(found)


def conditions_for(ctx: FamilyContext, model: str) -> list[Condition]:
    """Every condition any refusal claim needs with ``model`` as the model run."""
    sources = {model, "random"}
    if ctx.family.has_control and model != "control":
        sources.add("control")
    for ref, post in pairs_in_use(ctx):
        if model == post:
            sources.update({ref, f"half:{post}"})
        if model == ref:
            sources.add(post)
    conds = [Condition("baseline", "harmful_test"), Condition("baseline", "harmless_test")]
    for src in sorted(sources):
        conds += [Condition("ablation", "harmful_test", src),
                  Condition("addition", "harmless_test", src)]
    return conds


def hooks_for(ctx: FamilyContext, model: str, cond: Condition, n_layers: int) -> list[Hook]:
    """The hook list of ``cond`` on ``model`` (paper code Refusal/apply_refusal_dir.py)."""
    settings = ctx.family.refusal
    if cond.kind == "baseline":
        return []
    direction = direction_for(ctx, cond.source)
    if cond.kind == "ablation":
        return ablation_hooks(direction, n_layers)
    return addition_hooks(direction, settings.layer, settings.addition_coefs[model],
                          settings.hooks)


def _cache_path(ctx: FamilyContext, model: str, cond: Condition, prompts: list[str]) -> Path:
    from mechtests.store import hash_key, hash_prompts

    settings = ctx.family.refusal
    direction = "" if cond.kind == "baseline" else hashlib.sha256(
        direction_for(ctx, cond.source).numpy().tobytes()).hexdigest()
    key = {
        "v": CODE_VERSION, "model": ctx.fingerprint(model), "dtype": ctx.options.dtype,
        "backend": ctx.options.backend, "prompts": hash_prompts(prompts), "cond": cond.name,
        "direction": direction,
        "coef": settings.addition_coefs[model], "hooks": list(settings.hooks),
        "layer": settings.layer, "max_new_tokens": MAX_NEW_TOKENS,
    }
    root = ctx.options.cache_dir / "refusal" / ctx.fingerprint(model)[:16]
    return root / f"{cond.kind}-{hash_key(key)[:16]}.json"


def generations(ctx: FamilyContext, model: str) -> dict[str, list[str]]:
    """Condition name -> generations of ``model`` for every condition it needs (memoised)."""

    def run() -> dict[str, list[str]]:
        settings, data = ctx.family.refusal, splits(ctx)
        out: dict[str, list[str]] = {}
        todo = []
        for cond in conditions_for(ctx, model):
            prompts = format_prompts(settings.templates[model], getattr(data, cond.split))
            path = _cache_path(ctx, model, cond, prompts)
            cached = read_checked(path, _texts_check(len(prompts), cond.name))
            if cached is not None:
                out[cond.name] = cached
                continue
            todo.append((cond, prompts, path))
        if todo:
            backend = ctx.backend(model)
            for cond, prompts, path in todo:
                hooks = hooks_for(ctx, model, cond, backend.n_layers)
                texts = backend.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, hooks=hooks,
                                         batch_size=GEN_BATCH)
                write_checked(path, list(texts), _texts_check(len(prompts), cond.name),
                              f"generations of {ctx.family.name}/{model} under {cond.name}")
                out[cond.name] = list(texts)
        return out

    return ctx.memo(f"refusal.generations.{model}", run)


def _texts_check(n: int, name: str) -> Callable[[Any], str | None]:
    """``n`` generated strings, not all empty (an fp16 overflow generates nothing)."""
    return lambda value: texts_problem(value, n, name)


def scorers(ctx: FamilyContext) -> dict[str, RefusalScorer]:
    """``paper`` (case-sensitive startswith) and ``substring`` (Arditi, case-insensitive), with
    the family's refusal prefixes where it configures them."""
    own = tuple(ctx.family.refusal.prefixes)
    return {
        "paper": RefusalScorer.paper(own or PAPER_PREFIXES),
        "substring": RefusalScorer.arditi(own or ARDITI_SUBSTRINGS),
    }


def flags(ctx: FamilyContext, model: str, cond: Condition, scorer: str = "paper") -> np.ndarray:
    """Per-prompt refusal indicators (float64 0/1) of ``model`` under ``cond``."""
    texts = generations(ctx, model)[cond.name]
    judge = scorers(ctx)[scorer]
    return np.array([1.0 if judge.is_refusal(t) else 0.0 for t in texts], dtype=np.float64)
