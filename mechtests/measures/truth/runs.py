"""Orchestration of the truth area: statements, activations, directions and steering runs.

The truth claims (:mod:`mechtests.measures.truth.measures`) read everything from three memoised
pieces, so each model is visited at most twice per process (once for activations, once for
steering; the second visit starts with the model still loaded from the first):

* :func:`truth_datasets` - the family's training datasets and held-out dataset
  (``truth.train_datasets``, ``truth.heldout_dataset``), each subsampled by ``ctx.subsample``.
* :func:`role_truth` - for every role: activations at the last token of the bare statement
  (``blocks.L.hook_resid_post`` = the paper's nnsight ``layers[L].output``, positions ``[-1]``),
  centered per dataset (float64 means); the difference-of-means direction at every layer from
  the training datasets; and the centered ``probe_layer`` activations of every dataset for the
  probes. Activations go through the on-disk store, so a warm cache loads no model.
* :func:`steering` - for the base and each post-trained role: baseline ``P_diff`` and the flip
  under every role's steering vector ``v = mu_T - mu_F`` (paper code
  Knowledge+Truthfulness/interventions.py) and under
  :data:`N_RANDOM` random directions with the norm of the base vector. Per-statement ``P_diff``
  arrays are also cached on disk (``<cache>/truth/<model fingerprint>/``, keyed by the queries,
  vectors, sites, positions, readout tokens, dtype and backend).

Deviation: a role's ``prompt_prefix`` (e.g. Mistral-SFT's literal ``"<s> "``) is put in front of
every truth prompt of that role; the paper's truth code uses none.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechtests.data.statements import (
    StatementSet,
    build_queries,
    center_per_dataset,
    load_few_shot,
    load_statements,
)
from mechtests.methods.directions import diff_of_means
from mechtests.methods.stats import random_unit_directions
from mechtests.methods.steering import (
    SteeringResult,
    run_steering,
    statement_positions,
    steering_sites,
)
from mechtests.sites import site_name
from mechtests.store import number_list_problem, read_checked, write_checked

if TYPE_CHECKING:
    from mechtests.measures.context import FamilyContext

__all__ = [
    "N_BOOT",
    "N_RANDOM",
    "DatasetActs",
    "RoleTruth",
    "SteeringRun",
    "role_truth",
    "seed_for",
    "steering",
    "steering_roles",
    "truth_datasets",
]

N_RANDOM = 3  # random control directions per model (their IE is averaged)
N_BOOT = 1000  # bootstrap resamples for every truth interval
# the paper batches 16 (paper code Knowledge+Truthfulness/interventions.py); rows are independent
STEER_BATCH = 64
CODE_VERSION = "1"  # bump when steering changes, to invalidate the disk cache
ROLE_ORDER = ("control", "base", "sft", "instruct")  # activation sweep; steering runs reversed


def seed_for(ctx: FamilyContext, *parts: object) -> int:
    """A stable seed from the run seed and ``parts``."""
    return zlib.crc32(":".join(str(p) for p in (ctx.options.seed, *parts)).encode())


@dataclass(frozen=True)
class DatasetActs:
    """One dataset's centered activations at the probe layer, with labels."""

    name: str
    acts: torch.Tensor  # [n, d] float32, centered with this dataset's mean
    labels: torch.Tensor  # [n] int64


@dataclass
class RoleTruth:
    """Everything the truth claims need from one role's activations."""

    role: str
    d_model: int
    directions: dict[int, torch.Tensor]  # layer -> mu_T - mu_F over the training datasets
    datasets: dict[str, DatasetActs] = field(default_factory=dict)

    def split(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated centered probe-layer activations and labels of ``names``."""
        parts = [self.datasets[n] for n in names]
        return torch.cat([p.acts for p in parts]), torch.cat([p.labels for p in parts])


@dataclass
class SteeringRun:
    """One model's steering results and the vectors used."""

    model: str
    result: SteeringResult
    norms: dict[str, float]
    positions: list[int]
    n_true: int
    n_false: int


def truth_datasets(ctx: FamilyContext) -> dict[str, StatementSet]:
    """The training datasets and the held-out one, subsampled; memo ``"truth.datasets"``."""

    def load() -> dict[str, StatementSet]:
        t = ctx.family.truth
        out = {}
        for name in (*t.train_datasets, t.heldout_dataset):
            data = load_statements(ctx.datasets, name)
            keep = ctx.subsample(list(range(len(data))), salt=f"truth.{name}")
            out[name] = data.select(keep)
        return out

    return ctx.memo("truth.datasets", load)


def _n_layers(ctx: FamilyContext, role: str) -> int:
    config = json.loads((ctx.checkpoint_dir(role) / "config.json").read_text())
    config = config.get("text_config", config)
    return int(config.get("num_hidden_layers") or config["n_layer"])


def _collect_role(ctx: FamilyContext, role: str) -> RoleTruth:
    t = ctx.family.truth
    data = truth_datasets(ctx)
    prefix = ctx.family.models[role].prompt_prefix
    layers = list(range(_n_layers(ctx, role)))
    sites = [site_name(layer, "hook_resid_post") for layer in layers]
    probe_site = site_name(t.probe_layer, "hook_resid_post")
    sums: dict[int, list[torch.Tensor]] = {}
    counts = [0, 0]
    datasets: dict[str, DatasetActs] = {}
    d_model = 0
    for name in (*t.train_datasets, t.heldout_dataset):
        if name in datasets:
            continue
        train = name in t.train_datasets
        prompts = [prefix + s for s in data[name].statements]
        acts = ctx.activations(role, prompts, sites if train else [probe_site], [-1],
                               tag=f"truth-{name}")
        labels = data[name].label_tensor()
        pos = labels == 1
        for site, block in acts.items():
            layer = int(site.split(".")[1])
            centered = center_per_dataset([block[:, 0]])[0]
            d_model = centered.shape[1]
            if site == probe_site:
                datasets[name] = DatasetActs(name, centered, labels)
            if train:
                x = centered.to(torch.float64)
                acc = sums.setdefault(layer, [torch.zeros(d_model, dtype=torch.float64)] * 2)
                sums[layer] = [acc[0] + x[pos].sum(0), acc[1] + x[~pos].sum(0)]
        if train:
            counts = [counts[0] + int(pos.sum()), counts[1] + int((~pos).sum())]
    if 0 in counts:
        raise ValueError(f"{role}: the truth training datasets need true and false statements")
    directions = {layer: s[0] / counts[0] - s[1] / counts[1] for layer, s in sorted(sums.items())}
    truth = RoleTruth(role, d_model, directions, datasets)
    check = diff_of_means(*truth.split(t.train_datasets))
    if not torch.allclose(check, directions[t.probe_layer], atol=1e-6, rtol=1e-6):
        raise AssertionError(f"{role}: streamed and direct truth directions disagree")
    return truth


def role_truth(ctx: FamilyContext) -> dict[str, RoleTruth]:
    """Every role's :class:`RoleTruth`; memo ``"truth.roles"``."""

    def compute() -> dict[str, RoleTruth]:
        roles = [r for r in ROLE_ORDER if r in ctx.family.models]
        return {role: _collect_role(ctx, role) for role in roles}

    return ctx.memo("truth.roles", compute)


def steering_roles(ctx: FamilyContext) -> list[str]:
    """The models steered: the base and every post-trained role (activation order reversed)."""
    wanted = {"base", *ctx.family.post_roles}
    return [r for r in reversed(ROLE_ORDER) if r in wanted]


def _vectors(ctx: FamilyContext) -> dict[str, torch.Tensor]:
    roles = role_truth(ctx)
    layer = ctx.family.truth.probe_layer
    vectors = {role: rt.directions[layer] for role, rt in roles.items()}
    base = vectors["base"]
    randoms = random_unit_directions(N_RANDOM, base.shape[0], seed=seed_for(ctx, "truth.random"))
    for k in range(N_RANDOM):
        vectors[f"random{k}"] = randoms[k] * base.norm()
    return vectors


def _steer_model(ctx: FamilyContext, model: str, vectors: dict[str, torch.Tensor]) -> SteeringRun:
    t = ctx.family.truth
    heldout = truth_datasets(ctx)[t.heldout_dataset]
    examples = load_few_shot(ctx.datasets, t.heldout_dataset)
    prefix = ctx.family.models[model].prompt_prefix
    true_q, _ = build_queries(examples, heldout.subset(1), t.question, prefix=prefix)
    false_q, _ = build_queries(examples, heldout.subset(0), t.question, prefix=prefix)
    sites = steering_sites(t.intervene_layer, t.probe_layer)
    norms = {name: float(v.norm()) for name, v in vectors.items()}
    digest = hashlib.sha256()
    for part in (CODE_VERSION, ctx.options.dtype, ctx.options.backend, t.question,
                 t.readout_true, t.readout_false, *sites, *true_q, "|", *false_q):
        digest.update(part.encode() + b"\0")
    for name in sorted(vectors):
        digest.update(name.encode() + vectors[name].to(torch.float64).numpy().tobytes())
    path = (ctx.options.cache_dir / "truth" / ctx.fingerprint(model)[:16]
            / f"steer-{digest.hexdigest()[:16]}.json")
    validate = _steering_check(len(true_q), len(false_q), sorted(vectors))
    cached = read_checked(path, validate)
    if cached is not None:
        positions, result = _from_json(cached)
    else:
        backend = ctx.backend(model)
        positions = statement_positions(backend, true_q + false_q, t.question)
        result = run_steering(
            backend, true_q, false_q, vectors, sites, positions,
            backend.token_id(t.readout_true), backend.token_id(t.readout_false),
            coef=1.0, batch_size=STEER_BATCH,
        )
        write_checked(path, _to_json(positions, result), validate,
                      f"steering P_diff of {ctx.family.name}/{model}")
    return SteeringRun(model, result, norms, positions, len(true_q), len(false_q))


def _steering_check(n_true: int, n_false: int,
                    names: list[str]) -> Callable[[Any], str | None]:
    """Shape, dtype and finiteness of a steering entry (positions + P_diff per vector)."""

    def problem(raw: Any) -> str | None:
        if not isinstance(raw, dict) or not {"positions", "none", "subtract", "add"} <= set(raw):
            return "not a steering entry (positions, none, subtract, add)"
        for part, want in (("subtract", n_true), ("add", n_false)):
            if not isinstance(raw[part], dict) or sorted(raw[part]) != names:
                got = sorted(raw[part]) if isinstance(raw[part], dict) else raw[part]
                return f"{part} has vectors {got}, expected {names}"
            for name in names:
                found = number_list_problem(raw[part][name], want, f"{part}.{name}")
                if found:
                    return found
        none = raw["none"] if isinstance(raw["none"], dict) else {}
        return (number_list_problem(none.get("true"), n_true, "none.true")
                or number_list_problem(none.get("false"), n_false, "none.false")
                or number_list_problem(raw["positions"], 2, "positions"))

    return problem


def _from_json(raw: dict[str, Any]) -> tuple[list[int], SteeringResult]:
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in raw["none"].items()}
    result = SteeringResult(arr["true"], arr["false"])
    for name, values in raw["subtract"].items():
        result.true_subtract[name] = np.asarray(values, dtype=np.float64)
    for name, values in raw["add"].items():
        result.false_add[name] = np.asarray(values, dtype=np.float64)
    return [int(p) for p in raw["positions"]], result


def _to_json(positions: list[int], result: SteeringResult) -> dict[str, Any]:
    return {
        "positions": [int(p) for p in positions],
        "none": {"true": result.true_none.tolist(), "false": result.false_none.tolist()},
        "subtract": {k: v.tolist() for k, v in result.true_subtract.items()},
        "add": {k: v.tolist() for k, v in result.false_add.items()},
    }


def steering(ctx: FamilyContext) -> dict[str, SteeringRun]:
    """Steering runs of :func:`steering_roles`; memo ``"truth.steering"``."""

    def compute() -> dict[str, SteeringRun]:
        vectors = _vectors(ctx)
        return {model: _steer_model(ctx, model, vectors) for model in steering_roles(ctx)}

    return ctx.memo("truth.steering", compute)
