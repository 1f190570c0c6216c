"""Choose a family's refusal layer, position and coefficients from its TRAINING prompts only.

Du et al. fix the refusal site and the addition coefficients by hand per model (paper code
Refusal/extract_refusal_dir.py and apply_refusal_dir.py); a new family needs its own. This
module chooses them by a rule fixed before any claim is read, on ``harmful_train_128`` and
``harmless_train_128`` (never the held-out test prompts the claims are scored on):

1. **Damage check.** The post model's refusal on ``n_eval`` training harmful requests, without
   and with a *random* unit direction ablated at every layer (resid_pre/mid/post, the paper's
   ablation). ``random_ablation_kept`` = the second over the first.
2. **Site.** For every block input (``resid_pre``, layers >= 1: layer 0 is the embedding, where
   every prompt's last token is the same) x position in ``positions``, the post model's
   difference of means (harmful minus harmless, its own template).

   * When the random ablation keeps at least ``min_random_kept`` of the refusals, ablation is a
     clean instrument: the site whose direction, ablated at every layer, leaves the lowest refusal
     on the training harmful requests wins (ties: the later layer, then position -1).
   * Otherwise every all-layer ablation removes refusals by damage alone and cannot rank sites,
     so the site is chosen by addition: each site's *unnormalised* difference of means (which
     moves the harmless mean onto the harmful one, Arditi et al.'s act-add scale) is added at the
     family's hooks of that layer, and the site with the highest refusal on the training
     harmless requests wins (ties: the later layer, then position -1).
3. **Coefficients.** Per role, its own unit direction at the chosen site, added at the family's
   hooks of that layer: the smallest coefficient of the grid whose addition makes at least
   ``target_rate`` of ``n_eval`` training harmless requests refused; a role that never gets
   there takes the grid value with its highest rate when that rate beats its unsteered rate,
   else the post model's coefficient. ``subtraction_coef`` = the post model's coefficient.
   The grid is either absolute or in multiples of ``|mean harmful - mean harmless|`` of the
   role at the site (Gemma-3's residual norms reach 10^4-10^5 at the first position, so a fixed
   grid cannot fit every family).

The organism's calibration (:mod:`mechtests.organism.calibrate`) is this rule with its own
absolute grid; ``mechtests calibrate --model-family NAME`` runs it on any family and prints the
chosen settings with their evidence (JSON).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechtests.data.refusal import format_prompts
from mechtests.sites import site_name

if TYPE_CHECKING:
    import torch

    from mechtests.engine.backend import Backend, Hook
    from mechtests.families import Family

__all__ = [
    "CalibrationRule",
    "add_calibrate_subparser",
    "calibrate_family",
    "calibrate_refusal",
    "run_calibrate",
]

RANDOM_SEED = 5_000  # the random direction of the damage check (the claims' random control seed)
RELATIVE_GRID = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class CalibrationRule:
    """The fixed rule: evaluation sizes, grid and thresholds (see the module docstring)."""

    coef_grid: tuple[float, ...] = RELATIVE_GRID
    relative_grid: bool = True  # grid values are multiples of the role's |difference of means|
    positions: tuple[int, ...] = (-1, -2)
    n_eval: int = 32  # training requests per rate: every 4th of the 128, the first n_eval
    max_new_tokens: int = 4  # enough to read a refusal opening
    target_rate: float = 0.9
    min_random_kept: float = 0.5


@dataclass(frozen=True)
class TrainingRequests:
    """The training split and each role's template (the held-out split never enters)."""

    harmful: tuple[str, ...]
    harmless: tuple[str, ...]
    templates: Mapping[str, str]


Loader = Callable[[str], "Backend"]
Judge = Callable[[str], bool]


def _rate(backend: Backend, prompts: list[str], hooks: Sequence[Hook], judge: Judge,
          max_new_tokens: int) -> float:
    outs = backend.generate(prompts, max_new_tokens=max_new_tokens, hooks=hooks)
    return sum(judge(o) for o in outs) / len(outs)


def _differences(backend: Backend, data: TrainingRequests, role: str, layers: Sequence[int],
                 positions: Sequence[int]) -> dict[tuple[int, int], torch.Tensor]:
    """(layer, position) -> mean harmful minus mean harmless ``resid_pre`` (float32)."""
    sites = [site_name(layer, "hook_resid_pre") for layer in layers]
    template = data.templates[role]
    means = []
    for items in (data.harmful, data.harmless):
        got = backend.cache(backend.tokenize(format_prompts(template, list(items))), sites,
                            list(positions))
        means.append({s: got[s].mean(0) for s in sites})
    return {(layer, pos): means[0][s][j] - means[1][s][j]
            for layer, s in zip(layers, sites, strict=True) for j, pos in enumerate(positions)}


def _random_direction(d_model: int) -> torch.Tensor:
    import torch

    from mechtests.methods.stats import random_unit_directions

    return random_unit_directions(1, d_model, seed=RANDOM_SEED)[0].to(torch.float32)


def choose_site(backend: Backend, data: TrainingRequests, role: str, rule: CalibrationRule,
                hooks: Sequence[str], judge: Judge) -> dict[str, Any]:
    """Step 1 and 2 on the post model ``role``: the damage check and the site sweep."""
    from mechtests.methods.interventions import (
        PAPER_ABLATION_KINDS,
        ablation_hooks,
        addition_hooks,
    )

    template = data.templates[role]
    harmful = format_prompts(template, list(data.harmful[::4][:rule.n_eval]))
    harmless = format_prompts(template, list(data.harmless[::4][:rule.n_eval]))
    n = backend.n_layers
    baseline = _rate(backend, harmful, [], judge, rule.max_new_tokens)
    randomly = _rate(backend, harmful, ablation_hooks(_random_direction(backend.d_model), n),
                     judge, rule.max_new_tokens)
    kept = randomly / baseline if baseline > 0 else float("nan")
    by_ablation = kept >= rule.min_random_kept
    diffs = _differences(backend, data, role, range(1, n), rule.positions)
    sweep = []
    for (layer, pos), diff in diffs.items():
        if by_ablation:
            rate = _rate(backend, harmful, ablation_hooks(diff, n, PAPER_ABLATION_KINDS), judge,
                         rule.max_new_tokens)
            sweep.append({"layer": layer, "pos": pos, "ablated_refusal": rate})
        else:
            c = float(diff.norm())
            rate = _rate(backend, harmless, addition_hooks(diff, layer, c, hooks), judge,
                         rule.max_new_tokens)
            sweep.append({"layer": layer, "pos": pos, "coef": round(c, 3), "added_refusal": rate})
    if by_ablation:
        best = min(sweep, key=lambda s: (s["ablated_refusal"], -s["layer"], -s["pos"]))
    else:
        best = max(sweep, key=lambda s: (s["added_refusal"], s["layer"], s["pos"]))
    return {"baseline_harmful": baseline, "random_ablation_refusal": randomly,
            "random_ablation_kept": kept,
            "chosen_by": "ablation" if by_ablation else "addition (ablation is destructive)",
            "layer": int(best["layer"]), "position": int(best["pos"]), "sweep": sweep}


def choose_coefficient(backend: Backend, data: TrainingRequests, role: str, site: tuple[int, int],
                       rule: CalibrationRule, hooks: Sequence[str], judge: Judge
                       ) -> dict[str, Any]:
    """Step 3 for one role: its own direction at ``site``, the grid scan and its evidence."""
    from mechtests.methods.interventions import addition_hooks

    layer, pos = site
    diff = _differences(backend, data, role, [layer], [pos])[(layer, pos)]
    scale = float(diff.norm()) if rule.relative_grid else 1.0
    prompts = format_prompts(data.templates[role], list(data.harmless[::4][:rule.n_eval]))
    baseline = _rate(backend, prompts, [], judge, rule.max_new_tokens)
    rates: dict[float, float] = {}
    found = None
    for step in rule.coef_grid:
        c = round(step * scale, 1) if rule.relative_grid else step
        rates[c] = _rate(backend, prompts, addition_hooks(diff, layer, c, hooks), judge,
                         rule.max_new_tokens)
        if rates[c] >= rule.target_rate:
            found = c
            break
    best = max(rates, key=lambda c: (rates[c], -c))
    return {"coef": found, "best_below_target": None if found is not None or rates[best]
            <= baseline else best, "baseline": baseline, "rates": rates,
            "diff_norm": float(diff.norm())}


def calibrate_refusal(load: Loader, roles: Sequence[str], post: str, data: TrainingRequests,
                      rule: CalibrationRule, hooks: Sequence[str], judge: Judge
                      ) -> dict[str, Any]:
    """The whole rule: ``load(role)`` gives a role's backend (the caller frees the previous
    one); returns the chosen ``layer``, ``position``, ``addition_coefs``, ``subtraction_coef``
    and the evidence of every step."""
    site = choose_site(load(post), data, post, rule, hooks, judge)
    where = (site["layer"], site["position"])
    scans = {role: choose_coefficient(load(role), data, role, where, rule, hooks, judge)
             for role in [post, *[r for r in roles if r != post]]}

    def pick(scan: dict[str, Any]) -> float | None:
        return scan["coef"] if scan["coef"] is not None else scan["best_below_target"]

    post_coef = pick(scans[post])
    if post_coef is None:
        post_coef = max(scans[post]["rates"])
    chosen = {role: pick(scan) or post_coef for role, scan in scans.items()}
    return {**site, "addition": scans, "addition_coefs": chosen, "subtraction_coef": post_coef}


# -- any family --------------------------------------------------------------------------------


def calibrate_family(family: Family, cache_dir: Path, datasets_dir: Path | None,
                     rule: CalibrationRule | None = None, device: str = "auto") -> dict[str, Any]:
    """:func:`calibrate_refusal` on ``family``'s checkpoints and training split, judged with the
    claims' prompt-prefix scorer (the family's prefixes, else the paper's)."""
    from mechtests.data.refusal import load_refusal_splits
    from mechtests.measures.context import FamilyContext, RunOptions
    from mechtests.methods.refusal_score import PAPER_PREFIXES, RefusalScorer

    rule = rule or CalibrationRule()
    options = RunOptions(cache_dir=cache_dir, report_dir=cache_dir / "calibrate",
                         device=device, datasets_dir=datasets_dir, progress=False)
    ctx = FamilyContext(family, options)
    splits = load_refusal_splits(ctx.datasets)
    settings = family.refusal
    data = TrainingRequests(splits.harmful_train, splits.harmless_train, settings.templates)
    scorer = RefusalScorer.paper(settings.prefixes or PAPER_PREFIXES)
    post = "instruct" if "instruct" in family.roles else family.post_roles[-1]
    try:
        result = calibrate_refusal(ctx.backend, family.roles, post, data, rule, settings.hooks,
                                   scorer.is_refusal)
    finally:
        ctx.release()
    return {"family": family.name, "post_role": post,
            "rule": {k: getattr(rule, k) for k in rule.__dataclass_fields__},
            "data": {"harmful": "harmful_train_128", "harmless": "harmless_train_128",
                     "n_harmful": len(data.harmful), "n_harmless": len(data.harmless)},
            **result}


def add_calibrate_subparser(sub: Any) -> None:
    """``mechtests calibrate --model-family NAME``."""
    parser = sub.add_parser(
        "calibrate",
        help="choose a family's refusal layer, position and coefficients from training prompts",
        description="Run the refusal calibration rule (mechtests.measures.refusal.calibrate) on a "
        "family's checkpoints and training split; print the chosen settings and their evidence "
        "as JSON. Copy the values into the family's refusal block of families.yaml.",
    )
    parser.add_argument("--model-family", required=True, help="the family to calibrate")
    parser.add_argument("--mechtests-datasets", default=None,
                        help="the paper's datasets folder. Default: $MECHTESTS_DATASETS, else the "
                        "fetched folder (mechtests datasets fetch).")
    parser.add_argument("--families-file", default=None,
                        help="extra YAML file of families. Default: none.")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda. Default: 'auto'.")
    parser.add_argument("--output", default=None, help="also write the JSON here. Default: none.")


def run_calibrate(args: argparse.Namespace) -> int:
    """Entry point of ``mechtests calibrate``."""
    import os

    import torch

    from mechtests.checkpoints.cache_dir import default_cache_dir
    from mechtests.errors import ConfigError
    from mechtests.families import load_families

    families = load_families(Path(args.families_file) if args.families_file else None)
    if args.model_family not in families:
        raise ConfigError(f"unknown family {args.model_family!r}; expected one of "
                          f"{', '.join(sorted(families))}. Fix: mechtests families lists them.")
    datasets = args.mechtests_datasets or os.environ.get("MECHTESTS_DATASETS")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    result = calibrate_family(families[args.model_family], default_cache_dir(),
                              Path(datasets) if datasets else None, device=args.device)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0
