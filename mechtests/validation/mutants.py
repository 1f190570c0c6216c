"""Known-answer mutants: a family's own checkpoints changed by weight surgery.

A mutant is a post-trained model whose relation to the base is known by construction, so each
claim's verdict on the pair (base, mutant) is known before anything is measured
(``expected.yaml``). Mutants are built once into the cache, under
``<cache>/mutants/<family>-<mutant>-<key>``, where ``<key>`` hashes the recipe, its version, the
source checkpoint's fingerprint and the fingerprints of the checkpoints its direction or neurons
come from. A build writes a temporary directory and renames it into place, under a file lock.

The directions and neurons are the suite's own (the truth direction of ``measures.truth``, the
refusal direction of ``measures.refusal.runs``, the entropy neurons of ``methods.entropy_neurons``
with the claim's parameters), computed on the unmodified family through a
:class:`~mechtests.measures.context.FamilyContext` that shares the run's activation cache.

Example:
    >>> family = load_families()["organism"]
    >>> build_mutant(family, "identity", Path(".cache"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mechtests.checkpoints.atomic import atomic_directory
from mechtests.errors import CheckpointError, ConfigError
from mechtests.families import Family
from mechtests.measures.context import FamilyContext, RunOptions
from mechtests.validation import surgery

RECIPE_VERSION = "1"
CARD = ".mutant.json"  # dot-file: not part of the checkpoint's fingerprint
ENTROPY_SCALE = 2.0  # entropy_neurons_scaled: factor on the base entropy neurons' outputs


@dataclass(frozen=True)
class Recipe:
    """How one mutant is made from a family's checkpoints."""

    name: str
    source: str  # role whose checkpoint is copied (and changed)
    settings: str  # role whose refusal template, position and coefficient the mutant uses
    uses: tuple[str, ...]  # roles whose checkpoints the direction or neurons are computed on
    summary: str


MUTANTS: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("identity", "base", "base", (),
               "post = the base checkpoint, bitwise (a post-training that changed nothing)"),
        Recipe("control", "control", "control", (),
               "post = the independently trained control base (a model that shares nothing "
               "with the base but its data)"),
        Recipe("truth_ablated", "instruct", "instruct", ("base",),
               "post = instruct with the base's truth direction (probe layer) projected out of "
               "the embedding and every o_proj and down_proj"),
        Recipe("refusal_orthogonalised", "instruct", "instruct", ("instruct",),
               "post = instruct with its own refusal direction orthogonalised out of the "
               "embedding and every o_proj and down_proj (Arditi et al. 2024, section 4.1)"),
        Recipe("entropy_neurons_zeroed", "instruct", "instruct", ("instruct",),
               "post = instruct with the output weights of its top-10 entropy neurons (last "
               "MLP) set to zero"),
        Recipe("base_refusal_orthogonalised", "base", "base", ("base",),
               "post = the base with its own refusal direction orthogonalised out of the "
               "embedding and every o_proj and down_proj (refusal rewritten, all else kept)"),
        Recipe("entropy_neurons_scaled", "base", "base", ("base",),
               f"post = the base with the output weights of its top-10 entropy neurons "
               f"multiplied by {ENTROPY_SCALE:g} (a confidence shift made by those neurons)"),
    )
}


def parse_mutants(text: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (all mutants when empty); unknown names are a ConfigError."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()] or list(MUTANTS)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise ConfigError(
            f"unknown mutant(s) {', '.join(unknown)}; expected some of {', '.join(MUTANTS)}. "
            "Fix: pass --mutants with names from that list."
        )
    return names


def _context(family: Family, cache_dir: Path, roles: tuple[str, ...]) -> FamilyContext:
    """A context on ``family`` restricted to ``roles`` (fewer models loaded for a direction)."""
    models = {role: family.models[role] for role in roles}
    options = RunOptions(cache_dir=cache_dir, report_dir=cache_dir / "mutants" / "scratch",
                         progress=False)
    return FamilyContext(replace(family, models=models), options)


def truth_direction(family: Family, cache_dir: Path) -> torch.Tensor:
    """The base's truth direction at the family's probe layer (``measures.truth``)."""
    from mechtests.measures.truth.measures import truth_directions

    ctx = _context(family, cache_dir, ("base",))
    try:
        return truth_directions(ctx)["base"]
    finally:
        ctx.release()


def refusal_direction(family: Family, cache_dir: Path, role: str) -> torch.Tensor:
    """``role``'s unit refusal direction at the family's refusal layer, in its own template."""
    from mechtests.measures.refusal.runs import refusal_directions

    ctx = _context(family, cache_dir, (role,))
    try:
        return refusal_directions(ctx)[role]
    finally:
        ctx.release()


def entropy_neurons(family: Family, cache_dir: Path, role: str) -> tuple[int, ...]:
    """``role``'s entropy neurons with the overlap claim's parameters."""
    from mechtests.claims.table import load_claims
    from mechtests.methods.entropy_neurons import neuron_stats, select_entropy_neurons

    params = {c.id: c.params for c in load_claims()}["confidence.entropy_neurons.overlap"]
    ctx = _context(family, cache_dir, (role,))
    try:
        weights = ctx.backend(role).readout_weights()
        stats = neuron_stats(weights, fold=bool(params.get("fold", True)))
    finally:
        ctx.release()
    chosen = select_entropy_neurons(stats, k=int(params.get("k", 10)),
                                    norm_top=float(params.get("norm_top", 0.25)))
    return chosen.indices


def _n_layers(config: Mapping[str, object]) -> int:
    return int(str(config["num_hidden_layers"]))


Surgery = Callable[[dict[str, torch.Tensor], Mapping[str, object]], dict[str, torch.Tensor]]


def _surgery(recipe: Recipe, family: Family, cache_dir: Path
             ) -> tuple[Surgery | None, dict[str, Any]]:
    """The state-dict change of ``recipe`` and a JSON record of what it used."""
    if recipe.name == "truth_ablated":
        d = truth_direction(family, cache_dir)
        return (lambda s, c: surgery.project_out_writers(s, d, _n_layers(c)),
                {"direction": "truth", "layer": family.truth.probe_layer, "norm": float(d.norm())})
    role = recipe.uses[0] if recipe.uses else recipe.source
    if recipe.name.endswith("refusal_orthogonalised"):
        r = refusal_direction(family, cache_dir, role)
        return (lambda s, c: surgery.project_out_writers(s, r, _n_layers(c)),
                {"direction": f"refusal of {role}", "layer": family.refusal.layer})
    if recipe.name.startswith("entropy_neurons"):
        neurons = entropy_neurons(family, cache_dir, role)
        factor = 0.0 if recipe.name.endswith("zeroed") else ENTROPY_SCALE
        return (lambda s, c: surgery.scale_neurons(s, _n_layers(c) - 1, neurons, factor),
                {"neurons": list(neurons), "factor": factor})
    return None, {}


def mutant_key(family: Family, recipe: Recipe, cache_dir: Path) -> str:
    """Hash of the recipe and every checkpoint (and setting) the mutant depends on."""
    from mechtests.families import resolve_checkpoint
    from mechtests.store import fingerprint_checkpoint

    def fingerprint(role: str) -> str:
        return fingerprint_checkpoint(resolve_checkpoint(family.models[role].ref, cache_dir))

    payload = {
        "recipe": recipe.name,
        "version": RECIPE_VERSION,
        "source": fingerprint(recipe.source),
        "uses": {role: fingerprint(role) for role in recipe.uses},
        "truth_layer": family.truth.probe_layer if "truth" in recipe.name else None,
        "refusal": [family.refusal.layer, family.refusal.templates.get(recipe.settings)]
        if "refusal" in recipe.name else None,
        "entropy_scale": ENTROPY_SCALE if recipe.name == "entropy_neurons_scaled" else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_mutant(family: Family, name: str, cache_dir: Path) -> Path:
    """The checkpoint directory of mutant ``name`` of ``family``, built once into the cache."""
    from filelock import FileLock

    from mechtests.families import resolve_checkpoint

    recipe = MUTANTS[parse_mutants(name)[0]]
    for role in (recipe.source, *recipe.uses):
        if role not in family.models:
            raise CheckpointError(
                f"mutant {name!r} needs the {role!r} checkpoint of family {family.name!r}, which "
                f"has only {', '.join(family.models)}. Fix: pick mutants whose roles it has."
            )
    key = mutant_key(family, recipe, cache_dir)
    root = Path(cache_dir) / "mutants" / f"{family.name}-{name}-{key}"
    if (root / "config.json").is_file():
        return root
    source = resolve_checkpoint(family.models[recipe.source].ref, cache_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if (root / "config.json").is_file():
            return root
        with atomic_directory(root) as tmp:
            record = _write(recipe, family, cache_dir, source, tmp)
            (tmp / CARD).write_text(json.dumps(
                {"mutant": name, "family": family.name, "key": key, "summary": recipe.summary,
                 "source": family.models[recipe.source].ref, **record}, indent=1))
    return root


def _write(recipe: Recipe, family: Family, cache_dir: Path, source: Path, out: Path
           ) -> dict[str, Any]:
    """Write the mutant's files into ``out``; return what the surgery used."""
    config = json.loads((source / "config.json").read_text())
    change, record = _surgery(recipe, family, cache_dir)
    if change is None:  # a bitwise copy (safetensors only)
        surgery.weight_files(source)
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, out / path.name)
        return record
    surgery.check_supported(config, source)
    surgery.save_like(source, out, change(surgery.load_state(source), config))
    return record
