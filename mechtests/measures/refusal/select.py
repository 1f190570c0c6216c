"""Arditi et al.'s direction-selection sweep on one model, reported beside the paper's fixed site.

Du et al. fix the refusal layer and position by hand (paper code Refusal/utils.py and
extract_refusal_dir.py); Arditi et al. (7.3) sweep
every block input (``resid_pre``) x every end-of-instruction position and pick a candidate by
ablation refusal score under a KL and a steering filter (:func:`mechtests.methods.refusal.
select_direction`). This module runs that sweep on a family's model and reports which site it
would choose and how close that direction is to the one at the family's configured site; the
claims themselves always use the configured site.

Deviations from Arditi et al.: candidates come from the training prompts (not a separate
harmful/harmless train set of 128 from several benchmarks), and the sweep is scored on the first
32 training prompts of each kind (their val split is 32 prompts); no refusal-score filtering of
the prompts. Refusal tokens are the first tokens of the family's refusal prefixes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mechtests.data.refusal import format_prompts, template_suffix
from mechtests.measures.refusal.runs import refusal_directions, scorers, splits
from mechtests.methods.directions import cosine
from mechtests.methods.refusal import candidate_directions, select_direction
from mechtests.sites import site_name

if TYPE_CHECKING:
    from mechtests.measures.context import FamilyContext

__all__ = ["KL_THRESHOLD", "sweep"]

# Arditi et al. pipeline/submodules/select_direction.py defaults (andyrdt/refusal_direction)
KL_THRESHOLD = 0.1
INDUCE_THRESHOLD = 0.0
PRUNE_LAYER_FRACTION = 0.2
N_SELECT = 32


def sweep(ctx: FamilyContext, role: str) -> dict[str, Any]:
    """The sweep's choice on ``role`` and every candidate's scores (memoised)."""

    def run() -> dict[str, Any]:
        settings, data = ctx.family.refusal, splits(ctx)
        configured_dir = refusal_directions(ctx)[role]  # before loading: may visit other roles
        template = settings.templates[role]
        backend = ctx.backend(role)
        n_eoi = len(backend.tokenizer(template_suffix(template), add_special_tokens=False)
                    ["input_ids"]) or 1
        positions = list(range(-n_eoi, 0))
        sites = [site_name(layer, "hook_resid_pre") for layer in range(backend.n_layers)]
        acts = {}
        for name in ("harmful_train", "harmless_train"):
            prompts = format_prompts(template, getattr(data, name))
            got = ctx.activations(role, prompts, sites, positions, tag=f"refusal-sweep-{name}")
            acts[name] = {layer: got[s] for layer, s in enumerate(sites)}
        candidates, skipped = candidate_directions(acts["harmful_train"], acts["harmless_train"],
                                                   positions)
        token_ids = sorted({int(backend.tokenizer(p, add_special_tokens=False)["input_ids"][0])
                            for p in scorers(ctx)["paper"].phrases})
        backend = ctx.backend(role)  # activations may have reloaded it
        selection = select_direction(
            backend,
            format_prompts(template, data.harmful_train[:N_SELECT]),
            format_prompts(template, data.harmless_train[:N_SELECT]),
            candidates, token_ids, kl_threshold=KL_THRESHOLD, induce_threshold=INDUCE_THRESHOLD,
            prune_layer_fraction=PRUNE_LAYER_FRACTION, skipped=skipped,
        )
        configured = (settings.layer, settings.positions[role])
        chosen = None if selection.direction is None else cosine(
            selection.direction, configured_dir)
        return {
            "chosen": None if selection.layer is None else
            {"layer": selection.layer, "position": selection.position},
            "configured": {"layer": configured[0], "position": configured[1]},
            "cos_chosen_configured": chosen,
            "baseline_logodds": {"harmful": selection.baseline_harmful,
                                 "harmless": selection.baseline_harmless},
            "refusal_token_ids": token_ids,
            "skipped_sites": [list(s) for s in selection.skipped],
            "candidates": [
                {"layer": c.layer, "position": c.position, "ablation": round(c.ablation_score, 4),
                 "steering": round(c.steering_score, 4), "kl": round(c.kl, 5), "kept": c.kept,
                 "reason": c.reason} for c in selection.candidates
            ],
        }

    return ctx.memo(f"refusal.sweep.{role}", run)
