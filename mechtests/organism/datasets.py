"""The organism's built-in datasets in the paper's data layout (paper code
Knowledge+Truthfulness/patching_process_data.py).

Written from :func:`mechtests.organism.world.make_world` into ``fixtures/organism/datasets``::

    du2025/<relation>.csv            statement,label   (1 true / 0 false, one false per true)
    du2025/cities.csv, neg_cities.csv  + city,country,correct_country (as geometry-of-truth)
    du2025/few_shot_samples.json     [{dataset_name, few_shot_examples}] 2 TRUE + 2 FALSE lines
    du2025/tulu_extracted.csv        id,statement,label: (true, false) pairs of equal length
    refusal_splits/du2025_refusal_splits.json  harmful/harmless train (<=128) and test (<=100)

Choices (ours, not the paper's): ``cities``/``neg_cities`` hold only the *held-out* cities
(facts seen in pretraining, never judged), so the held-out truth evaluation of paper code
Knowledge+Truthfulness/probe_transfer.py
is also held out in entities. The five training datasets hold every subject of their relation.
Each dataset's false objects are a derangement of its true objects, so every true statement of
``cities.csv`` has a false partner with the same last word and the same token length (the
pairing of paper code Knowledge+Truthfulness/patching_process_data.py). Few-shot examples use
training subjects only. Refusal test sets use
only held-out acts (never seen in SFT or DPO).

Example:
    >>> write_datasets(Path("fixtures/organism/datasets"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from mechtests.organism.world import RELATIONS, World, balanced_false, make_world, requests

TRUTH_DATASETS = (*RELATIONS, "neg_cities")
FEW_SHOT_SUFFIX = " this statement is :"
DATASET_SEED = 1


def truth_rows(world: World, name: str, rng: random.Random) -> list[dict[str, str]]:
    """Rows of one true/false dataset: one true and one false statement per subject."""
    negated = name == "neg_cities"
    rel = world.relation("cities" if negated else name)
    heldout_only = rel.name == "cities"
    subjects = rel.subjects(heldout=True if heldout_only else None)
    truth = rel.truth
    pairs = [(s, truth[s]) for s in subjects]
    wrong = balanced_false(pairs, rng)
    rows: list[dict[str, str]] = []
    for s, obj in pairs:
        for o, is_true in ((obj, True), (wrong[s], False)):
            label = is_true != negated  # "not in <wrong>" is true
            row = {"statement": rel.statement(s, o, negated), "label": str(int(label))}
            if rel.name == "cities":
                row.update(city=s, country=o, correct_country=obj)
            rows.append(row)
    rng.shuffle(rows)
    return rows


def few_shot(world: World, name: str, rng: random.Random) -> list[str]:
    """2 TRUE + 2 FALSE example lines about training subjects (paper code
    Knowledge+Truthfulness/interventions.py)."""
    negated = name == "neg_cities"
    rel = world.relation("cities" if negated else name)
    subjects = rng.sample(rel.subjects(heldout=False), 4)
    truth = rel.truth
    lines = []
    for i, s in enumerate(subjects):
        want_true = i < 2
        use_true_obj = want_true != negated
        obj = truth[s] if use_true_obj else rng.choice([o for o in rel.objects if o != truth[s]])
        label = "TRUE" if want_true else "FALSE"
        lines.append(f"{rel.statement(s, obj, negated)}{FEW_SHOT_SUFFIX} {label}")
    return lines


def tulu_rows(world: World, rng: random.Random, n_pairs: int = 60) -> list[dict[str, str]]:
    """(true, false) pairs about training subjects of every relation, equal token length."""
    candidates = []
    for name in RELATIONS:
        rel = world.relation(name)
        truth = rel.truth
        for s in rel.subjects(heldout=False):
            wrong = rng.choice([o for o in rel.objects if o != truth[s]])
            candidates.append((rel.statement(s, truth[s]), rel.statement(s, wrong)))
    rows = []
    for i, (t, f) in enumerate(rng.sample(candidates, n_pairs)):
        rows.append({"id": str(i), "statement": t, "label": "1"})
        rows.append({"id": str(i), "statement": f, "label": "0"})
    return rows


def refusal_splits(world: World, rng: random.Random) -> dict[str, list[str]]:
    """Harmful / harmless request lists; test sets use held-out acts only (paper code
    Refusal/utils.py)."""

    def take(items: list[str], n: int) -> list[str]:
        return sorted(rng.sample(items, min(n, len(items))), key=items.index)

    return {
        "harmful_train_128": take(requests(world.harmful_train), 128),
        "harmless_train_128": take(requests(world.harmless_train), 128),
        "harmful_test_100": take(requests(world.harmful_test), 100),
        "harmless_test_100": take(requests(world.harmless_test), 100),
    }


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_datasets(out: Path, world: World | None = None) -> list[Path]:
    """Write every built-in dataset under ``out``; returns the files written."""
    world = world or make_world()
    rng = random.Random(DATASET_SEED)
    written: list[Path] = []
    shots = []
    for name in TRUTH_DATASETS:
        path = out / "du2025" / f"{name}.csv"
        _write_csv(path, truth_rows(world, name, rng))
        written.append(path)
        shots.append({"dataset_name": name, "few_shot_examples": few_shot(world, name, rng)})
    path = out / "du2025" / "few_shot_samples.json"
    path.write_text(json.dumps(shots, indent=1) + "\n", encoding="utf-8")
    written.append(path)
    path = out / "du2025" / "tulu_extracted.csv"
    _write_csv(path, tulu_rows(world, rng))
    written.append(path)
    path = out / "refusal_splits" / "du2025_refusal_splits.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refusal_splits(world, rng), indent=1) + "\n", encoding="utf-8")
    written.append(path)
    return written
