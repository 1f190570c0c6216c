"""Orchestration of the knowledge area: pairs, activations and patching runs per dataset.

Every knowledge and cross-model claim reads one memoised :class:`KnowledgeRun` per dataset
(:func:`knowledge_run`): the dataset's TRUE/FALSE pairs (built with the base model's tokenizer,
subsampled by ``ctx.subsample``), each model's clean logit differences, and per-pair patching
maps keyed ``(source, target)``: ``(m, m)`` is model ``m``'s own heatmap (paper code
Knowledge+Truthfulness/patching.py:patching_one_model),
``(a, b)`` patches ``a``'s TRUE activations into ``b`` (section 3). TRUE activations always go
through the on-disk store (``ctx.activations``), so a cross-model run only holds its target;
the clean logit differences and every patching call's maps are store entries too, keyed by the
target's prompts and every source's activations, so a second run loads no model for them.

Model visits, in order (each model is loaded once, the base twice):
``base`` (activations, own map) -> ``control`` (same) -> each post role (same, plus
``base -> post`` and ``null -> post``) -> ``base`` (``post -> base``, ``null -> base``).
Maps for other pairs are computed on demand by :func:`ensure_maps`.

The cross-model control source of a patch ``a -> b`` is :func:`null_source` ``(ctx, a)``:

* ``null``, the independent control base's TRUE activations, where the family has a control
  base (another model that knows the same facts, so the control asks whether *this* base's
  representation is what transfers);
* else ``a:false``, model ``a``'s own activations on the pair's FALSE prompt at the same sites
  (each visit caches its model's FALSE activations while it is loaded). They come from the
  source model, so they carry the whole model difference that ``a -> b`` carries, with the exact
  norms and distribution of ``a``'s residual stream, on a prompt of the same tokens except the
  FALSE ones; they carry nothing of the TRUE statement. Patched into ``b``'s FALSE run they
  restore TRUE only as far as the model difference alone pushes ``b`` towards TRUE, which is
  what the claims must beat. Columns before the first TRUE/FALSE difference get the same values
  as ``a -> b`` (the prompts agree there). Norm-matched random activations are no null here:
  on Gemma-3-270M (residual norms up to about 1,600) random vectors of those norms gave
  ``Rk(random -> post) / Rk(post -> post) = 29.7``, against 0.94 for the base's TRUE ones.
  A different pair's TRUE prompt (resample ablation) is no null either: every TRUE statement
  says "this is true" at its object and last tokens, so it restores TRUE where the real patch
  does.

Few-shot lines come from ``du2025/few_shot_samples.json``; a dataset without an entry (the
organism's ``tulu_extracted``) uses two TRUE and two FALSE statements of its own, left out of the
pairs. Deviation: for ``tulu_extracted`` the paper's patching code hard-codes other examples
("The Eiffel Tower is located in Paris." ...) than the JSON file holds; we use the file.

Deviation: a role's ``prompt_prefix`` (Mistral-SFT's ``"<s> "``) is put in front of that role's
prompts; the paper uses the SFT model's prompts for both models of a cross-model pair.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from mechtests.data.pairs import (
    GROUPED_DATASETS,
    PatchingSet,
    build_patching_set,
    build_tulu_set,
    read_tulu_pairs,
)
from mechtests.data.statements import load_few_shot, load_statements
from mechtests.errors import DatasetError
from mechtests.methods.heatmaps import group_columns, recovered_fraction
from mechtests.methods.patching import clean_logit_diffs, patch_heatmaps_many, resid_sites
from mechtests.store import hash_prompts

if TYPE_CHECKING:
    from mechtests.engine.backend import Backend
    from mechtests.measures.context import FamilyContext

__all__ = [
    "FALSE_RUN",
    "NULL",
    "N_BOOT",
    "KnowledgeRun",
    "ensure_maps",
    "knowledge_datasets",
    "knowledge_run",
    "null_label",
    "null_source",
    "seed_for",
]

N_BOOT = 1000  # bootstrap resamples over pairs for every knowledge interval
NULL = "null"  # source name of the control base's TRUE activations (the control-base null)
FALSE_RUN = ":false"  # "<role>:false": that role's FALSE-prompt activations (the fallback null)
MAX_ROWS = 128  # sites (or pairs) per forward
# part of the store keys of maps and clean logit differences: raise it when the patching
# method or the readout changes what they hold, so old entries are not read
RESULTS_VERSION = 1
Entry = tuple[dict[str, object], str, list[str]]  # a store entry's key, tag and prompts


def seed_for(ctx: FamilyContext, *parts: object) -> int:
    """A stable seed from the run seed and ``parts``."""
    return zlib.crc32(":".join(str(p) for p in (ctx.options.seed, *parts)).encode())


def null_source(ctx: FamilyContext, source: str) -> str:
    """The control source of patches from ``source`` (module docstring): ``null`` (the control
    base) where the family has one, else ``source``'s own FALSE-run activations."""
    return NULL if ctx.family.has_control else source + FALSE_RUN


def null_label(ctx: FamilyContext, source: str) -> str:
    """How the report names :func:`null_source` ``(ctx, source)``."""
    if ctx.family.has_control:
        return "control base's activations"
    return f"{source}'s own FALSE-prompt activations"


@dataclass
class KnowledgeRun:
    """One dataset's pairs and patching results on every model visited."""

    dataset: str
    pset: PatchingSet
    n_layers: int
    readout: tuple[int, int]
    maps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # [pair, layer, col]
    ld_true: dict[str, np.ndarray] = field(default_factory=dict)  # role -> [pair]
    ld_false: dict[str, np.ndarray] = field(default_factory=dict)
    engines: dict[str, str] = field(default_factory=dict)
    # per map: (the map, its NaN-zeroed values, validity as [pair, cells] float64) for resamples
    _dense: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.pset)

    @property
    def grouped(self) -> bool:
        return self.pset.grouped

    @property
    def columns(self) -> tuple[str, ...]:
        return self.pset.columns

    @property
    def knowledge_columns(self) -> tuple[int, ...]:
        return (0,) if self.grouped else self.pset.knowledge_columns

    @property
    def peak_column(self) -> int:
        """K4's column: the last subject token (the knowledge group for tulu)."""
        return 0 if self.grouped else self.pset.last_subject_column

    @property
    def first_informative_column(self) -> int:
        return 0 if self.grouped else self.pset.first_diff_column

    def heat(self, key: tuple[str, str], idx: np.ndarray | None = None) -> np.ndarray:
        """Mean map ``A [layer, column]`` over the pairs ``idx`` (all by default; repeats count,
        as in a bootstrap resample), NaN-skipping like ``np.nanmean``. A resample is a pair
        count vector times the NaN-zeroed maps (two dot products instead of a gathered copy:
        the knowledge bootstraps call this 1000 times per dataset and claim)."""
        maps = self.maps[key]
        if idx is None:
            return np.nanmean(maps, axis=0)
        if key not in self._dense or self._dense[key][0] is not maps:
            valid = ~np.isnan(maps)
            self._dense[key] = (maps, np.where(valid, maps, 0.0).reshape(len(maps), -1),
                                valid.reshape(len(maps), -1).astype(np.float64))
        _, values, valid = self._dense[key]
        counts = np.bincount(np.asarray(idx).ravel(), minlength=len(maps)).astype(np.float64)
        total, n = counts @ values, counts @ valid
        out = np.full(total.shape, np.nan)
        np.divide(total, n, out=out, where=n > 0)
        return out.reshape(maps.shape[1:])

    def recovered(self, key: tuple[str, str], idx: np.ndarray | None = None) -> np.ndarray:
        """``R`` of the map ``key`` with its target's own mean clean ``LD_T``, ``LD_F``."""
        target = key[1]
        t = self.ld_true[target] if idx is None else self.ld_true[target][idx]
        f = self.ld_false[target] if idx is None else self.ld_false[target][idx]
        return recovered_fraction(self.heat(key, idx), float(t.mean()), float(f.mean()))


def knowledge_datasets(ctx: FamilyContext, names: Sequence[str] | None = None) -> list[str]:
    """The datasets of a claim: ``names`` (a claim's ``params.datasets``) or the family's."""
    return list(names) if names else list(ctx.family.knowledge.datasets)


def _prompts(ctx: FamilyContext, role: str, prompts: Sequence[str]) -> list[str]:
    prefix = ctx.family.models[role].prompt_prefix
    return [prefix + p for p in prompts]


def _few_shot(
    ctx: FamilyContext, dataset: str, fallback: Sequence[tuple[str, int]]
) -> tuple[list[str], set[str]]:
    """The dataset's few-shot lines from ``few_shot_samples.json``; where it has none, two TRUE
    and two FALSE lines made from the last ``fallback`` statements, which are then returned as
    the second item (to keep them out of the pairs)."""
    try:
        return load_few_shot(ctx.datasets, dataset), set()
    except DatasetError:
        truth = ctx.family.truth
        t = [s for s, y in reversed(fallback) if y == 1][:2]
        f = [s for s, y in reversed(fallback) if y == 0][:2]
        lines = [s + truth.question + truth.readout_true for s in t] + [
            s + truth.question + truth.readout_false for s in f
        ]
        return lines, set(t) | set(f)


def _patching_set(ctx: FamilyContext, dataset: str, backend: Backend) -> PatchingSet:
    tok = backend.tokenizer
    question = ctx.family.truth.question

    def tokenize(text: str) -> list[int]:
        return list(tok(text)["input_ids"])

    def token_text(i: int) -> str:
        return str(tok.decode([i]))

    if dataset in GROUPED_DATASETS:
        pairs = read_tulu_pairs(ctx.datasets.path(f"du2025/{dataset}.csv"))
        examples, used = _few_shot(ctx, dataset, [(s, y) for p in pairs for s, y in
                                                  ((p[0], 1), (p[1], 0))])
        pairs = [p for p in pairs if p[0] not in used and p[1] not in used]
        pset = build_tulu_set(pairs, examples, question, tokenize, dataset=dataset)
    else:
        data = load_statements(ctx.datasets, dataset)
        examples, used = _few_shot(ctx, dataset, list(zip(data.statements, data.labels)))
        keep = [i for i, s in enumerate(data.statements) if s not in used]
        pset = build_patching_set(
            dataset, [data.statements[i] for i in keep], [data.labels[i] for i in keep],
            examples, question, tokenize, token_text,
        )
    chosen = ctx.subsample(list(range(len(pset))), salt=f"knowledge:{dataset}")
    return pset.select(chosen)


def knowledge_run(ctx: FamilyContext, dataset: str) -> KnowledgeRun:
    """The memoised run of ``dataset`` with the default maps (module docstring). The family's
    datasets are built together, so each model is visited once for all of them."""
    family = tuple(ctx.family.knowledge.datasets)
    if dataset in family:
        return ctx.memo("knowledge:runs", lambda: _build(ctx, family))[dataset]
    return ctx.memo(f"knowledge:run:{dataset}", lambda: _build(ctx, (dataset,)))[dataset]


def _build(ctx: FamilyContext, datasets: Sequence[str]) -> dict[str, KnowledgeRun]:
    fam = ctx.family
    backend = ctx.backend("base")
    truth = fam.truth
    runs = {
        dataset: KnowledgeRun(
            dataset=dataset,
            pset=_patching_set(ctx, dataset, backend),
            n_layers=backend.n_layers,
            readout=(backend.token_id(truth.readout_true),
                     backend.token_id(truth.readout_false)),
        )
        for dataset in datasets
    }
    visits: list[tuple[str, list[str]]] = [("base", [])]
    if fam.has_control:
        visits.append(("control", []))
    visits += [(post, ["base", null_source(ctx, "base")]) for post in fam.post_roles]
    visits.append(("base", list(dict.fromkeys(
        [*fam.post_roles, *(null_source(ctx, post) for post in fam.post_roles)]))))
    for target, sources in visits:
        for run in runs.values():
            _visit(ctx, run, target, sources)
    return runs


def ensure_maps(ctx: FamilyContext, run: KnowledgeRun, keys: Iterable[tuple[str, str]]) -> None:
    """Compute the missing ``(source, target)`` maps, sources' activations first."""
    missing = [k for k in dict.fromkeys(keys) if k not in run.maps]
    if any(t == NULL or t.endswith(FALSE_RUN) for _, t in missing):
        raise ValueError("a null source cannot be a patching target")
    for source in dict.fromkeys(s for s, _ in missing):
        if source != NULL:
            _source(ctx, run, source)
    for target in dict.fromkeys(t for _, t in missing):
        _visit(ctx, run, target, [s for s, t in missing if t == target and s != target])


def _source(ctx: FamilyContext, run: KnowledgeRun, source: str) -> list[torch.Tensor]:
    """``source``'s activations after every block at the window positions (the store): a role's
    TRUE prompts, ``<role>:false`` its FALSE prompts, ``null`` the control base's TRUE ones."""
    if source == NULL:
        return _source(ctx, run, "control")
    role, false_run = source.removesuffix(FALSE_RUN), source.endswith(FALSE_RUN)
    sites = resid_sites(run.n_layers)
    acts = ctx.activations(
        role,
        _prompts(ctx, role, run.pset.false_prompts if false_run else run.pset.true_prompts),
        sites,
        list(range(-run.pset.width, 0)),
        tag=f"knowledge-{run.dataset}" + ("-false" if false_run else ""),
    )
    return [acts[s] for s in sites]


def _visit(ctx: FamilyContext, run: KnowledgeRun, target: str, sources: Sequence[str]) -> None:
    """``target``'s clean LDs and own map, then ``sources -> target``; results go through the
    store, so the model is loaded only for what is not cached."""
    todo = [s for s in [target, *sources] if (s, target) not in run.maps]
    if not todo and target in run.ld_true:
        return
    # the own map alone (its sites before the first differing token are free), then every
    # other source in one pass over the FALSE prompts
    calls = [c for c in [[s] for s in todo if s == target] + [[s for s in todo if s != target]]
             if c]
    map_entries = [_maps_entry(ctx, run, target, call) for call in calls]
    ld_entry = _clean_ld_entry(ctx, run, target) if target not in run.ld_true else None
    entries = [*map_entries, *([ld_entry] if ld_entry else [])]
    if not all(ctx.store.has(key, tag) for key, tag, _ in entries):
        # the model will be loaded: its own TRUE activations go to the store meanwhile (a
        # later source), and its FALSE ones where they are the null of its patches into others
        _source(ctx, run, target)
        if null_source(ctx, target) != NULL:
            _source(ctx, run, null_source(ctx, target))
    if ld_entry:
        run.ld_true[target] = _clean_lds(ctx, run, target, ld_entry)
    for call, entry in zip(calls, map_entries):
        maps, engines = _patch_maps(ctx, run, target, call, entry)
        run.ld_false.setdefault(target, maps["ld_false"].numpy())
        for i, source in enumerate(call):
            run.maps[(source, target)] = _per_pair_maps(run.pset, maps[f"ld:{i}"].numpy())
            run.engines[f"{source}->{target}"] = engines[f"{i}"]


def _prompt_key(ctx: FamilyContext, role: str, prompts: Sequence[str]) -> dict[str, object]:
    """What identifies ``role``'s run on ``prompts`` in a cache key."""
    return {"model": ctx.fingerprint(role), "dtype": ctx.options.dtype,
            "backend": ctx.options.backend, "prompts": hash_prompts(prompts), "n": len(prompts)}


def _source_prompts(ctx: FamilyContext, run: KnowledgeRun, source: str) -> tuple[str, list[str]]:
    """The role and prompts whose activations :func:`_source` returns for ``source``."""
    role = "control" if source == NULL else source.removesuffix(FALSE_RUN)
    false_run = source.endswith(FALSE_RUN)
    return role, _prompts(ctx, role, run.pset.false_prompts if false_run else run.pset.true_prompts)


def _clean_ld_entry(ctx: FamilyContext, run: KnowledgeRun, target: str) -> Entry:
    """Store key, tag and prompts of ``target``'s clean TRUE logit differences."""
    prompts = _prompts(ctx, target, run.pset.true_prompts)
    key = {**_prompt_key(ctx, target, prompts), "result": "clean-ld", "version": RESULTS_VERSION,
           "readout": run.readout}
    return key, f"clean-ld-{run.dataset}", prompts


def _clean_lds(ctx: FamilyContext, run: KnowledgeRun, target: str, entry: Entry) -> np.ndarray:
    """``target``'s unpatched TRUE logit differences, through the store (``entry``:
    :func:`_clean_ld_entry`)."""
    key, tag, prompts = entry
    stored = ctx.store.get_or_compute(
        key, {"ld": (len(prompts),)},
        lambda: {"ld": clean_logit_diffs(ctx.backend(target), prompts, run.readout, MAX_ROWS)},
        tag=tag)
    return stored["ld"].numpy()


def _maps_entry(ctx: FamilyContext, run: KnowledgeRun, target: str, call: Sequence[str]
                ) -> Entry:
    """Store key, tag and FALSE prompts of the patching call ``call -> target``."""
    false_prompts = _prompts(ctx, target, run.pset.false_prompts)
    key = {**_prompt_key(ctx, target, false_prompts), "result": "patching-maps",
           "version": RESULTS_VERSION, "readout": run.readout, "widths": run.pset.widths,
           "sources": [_prompt_key(ctx, *_source_prompts(ctx, run, s)) for s in call]}
    return key, f"patching-{run.dataset}", false_prompts


def _patch_maps(ctx: FamilyContext, run: KnowledgeRun, target: str, call: Sequence[str],
                entry: Entry) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The maps ``source -> target`` of every source in ``call`` (one patching call, one FALSE
    pass) as ``ld:<i>`` and ``ld_false``, with each map's engine as label ``<i>``; through the
    store (``entry``: :func:`_maps_entry`, keyed by the target's FALSE run and every source's
    activations)."""
    key, tag, false_prompts = entry
    n, width = len(false_prompts), run.pset.width
    expected = {f"ld:{i}": (n, run.n_layers, width) for i in range(len(call))}
    outside = torch.tensor([[j < width - w for j in range(width)] for w in run.pset.widths],
                           dtype=torch.bool).view(n, 1, width).expand(n, run.n_layers, width)

    def problem(tensors: Mapping[str, torch.Tensor]) -> str | None:
        """NaN exactly outside each pair's window, finite inside: a complete map."""
        for name in expected:
            ld = tensors[name]
            if not torch.equal(torch.isnan(ld), outside) or torch.isinf(ld).any():
                return f"{name} is not finite exactly inside the pairs' windows"
        return None if torch.isfinite(tensors["ld_false"]).all() else "ld_false is not finite"

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        srcs = [_source(ctx, run, s) for s in call]
        results = patch_heatmaps_many(ctx.backend(target), false_prompts, srcs, run.readout,
                                      run.pset.widths, max_rows=MAX_ROWS)
        tensors = {f"ld:{i}": r.ld for i, r in enumerate(results)}
        labels = {f"{i}": r.engine + (f" ({r.note})" if r.note else "")
                  for i, r in enumerate(results)}
        return {**tensors, "ld_false": results[0].ld_false}, labels

    return ctx.store.get_or_compute_labelled(
        key, {**expected, "ld_false": (n,)}, compute, tag=tag, problem=problem,
        labels=[f"{i}" for i in range(len(call))])


def _per_pair_maps(pset: PatchingSet, ld: np.ndarray) -> np.ndarray:
    if not pset.grouped:
        return ld
    return np.stack([group_columns(ld[i], pset.diff_columns[i]) for i in range(len(pset))])
