"""True/false statement datasets: loaders, per-dataset centering, few-shot steering queries.

Formats (the paper's ``Knowledge+Truthfulness/datasets``, geometry-of-truth's layout):

* ``du2025/<name>.csv`` with at least the columns ``statement,label`` (label 1 = true, 0 = false);
  extra columns (``city,country,...``) are ignored.
* ``du2025/few_shot_samples.json``: a list of ``{"dataset_name", "few_shot_examples"}`` where each
  example is ``"<statement> This statement is: TRUE|FALSE"``.

Two helpers reproduce the paper's preprocessing:

* :func:`center_per_dataset` - ``collect_acts(center=True)`` in the paper's ``utils.py``
  (paper code Knowledge+Truthfulness/generate_acts.py): each dataset's activations minus that
  dataset's mean over both labels; the
  mean is taken in float64.
* :func:`build_queries` - ``interventions.py:prepare_data`` (paper code
Knowledge+Truthfulness/interventions.py): for statement ``i``
  the few-shot lines are shuffled with ``random.seed(1 + i)``, joined with ``"\\n"``, then
  ``"\\n" + statement + question`` is appended; statements that occur in the few-shot text are
  dropped. ``i`` counts within the list passed in (the paper calls it once for the true and once
  for the false statements).

Example:
    >>> qs, kept = build_queries(["a. Q TRUE", "b. Q FALSE"], ["c.", "a."], " Q")
    >>> kept
    ['c.']
    >>> qs[0].endswith("\\nc. Q")
    True
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mechtests.errors import DatasetError

if TYPE_CHECKING:
    from mechtests.data.sources import DatasetSource

__all__ = [
    "PAPER_TRUTH_DATASETS",
    "StatementSet",
    "build_queries",
    "center_per_dataset",
    "load_few_shot",
    "load_statements",
    "read_statements_csv",
]

PAPER_TRUTH_DATASETS = ("cities", "sp_en_trans", "animal_class", "inventors", "element_symb",
                        "facts")
"""The paper's truth datasets (train on five, hold out one; paper code
Knowledge+Truthfulness/probe_transfer.py)."""


@dataclass(frozen=True)
class StatementSet:
    """One dataset of statements with 0/1 labels."""

    name: str
    statements: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.statements)

    def label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.int64)

    def subset(self, label: int) -> list[str]:
        """The statements with ``label`` (1 = true, 0 = false), in file order."""
        return [s for s, y in zip(self.statements, self.labels) if y == label]

    def select(self, keep: Sequence[int]) -> StatementSet:
        """The rows at indices ``keep`` (in that order)."""
        return StatementSet(
            self.name, tuple(self.statements[i] for i in keep), tuple(self.labels[i] for i in keep)
        )


def _parse_label(raw: str, path: Path, row: int) -> int:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value not in (0.0, 1.0):
        raise DatasetError(
            f"{path} row {row}: label {raw!r} is not 0 or 1; expected a statement,label CSV with "
            "label 1 = true, 0 = false. Fix: correct the label column."
        )
    return int(value)


def read_statements_csv(path: Path, name: str | None = None) -> StatementSet:
    """Read a ``statement,label[,...]`` CSV (quoted multi-line statements allowed)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "statement" not in fields or "label" not in fields:
            raise DatasetError(
                f"{path} has columns {fields}; expected at least 'statement' and 'label'. "
                "Fix: use the geometry-of-truth format statement,label[,...]."
            )
        statements, labels = [], []
        for row, entry in enumerate(reader, start=2):
            statements.append(entry["statement"])
            labels.append(_parse_label(entry["label"], path, row))
    if not statements:
        raise DatasetError(f"{path} has no rows. Fix: point at a non-empty statement,label CSV.")
    return StatementSet(name or Path(path).stem, tuple(statements), tuple(labels))


def load_statements(source: DatasetSource, name: str) -> StatementSet:
    """The dataset ``du2025/<name>.csv`` of ``source``."""
    return read_statements_csv(source.statements_csv(name), name)


def load_few_shot(source: DatasetSource, dataset: str) -> list[str]:
    """The few-shot example lines for ``dataset`` from ``du2025/few_shot_samples.json``."""
    path = source.path("du2025/few_shot_samples.json")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}). Fix: restore the file.") from None
    names = []
    for entry in entries:
        names.append(entry.get("dataset_name"))
        if entry.get("dataset_name") == dataset:
            examples = entry.get("few_shot_examples")
            if not isinstance(examples, list) or not examples:
                break
            return [str(e) for e in examples]
    raise DatasetError(
        f"{path} has no few_shot_examples for dataset {dataset!r} (has: {names}). Fix: add an "
        "entry {dataset_name, few_shot_examples} or pick another held-out dataset."
    )


def build_queries(
    examples: Sequence[str],
    statements: Sequence[str],
    question: str,
    seed: int = 1,
    prefix: str = "",
) -> tuple[list[str], list[str]]:
    """Few-shot steering queries (paper code Knowledge+Truthfulness/interventions.py): ``(queries,
    kept_statements)``.

    ``prefix`` (a family's per-model ``prompt_prefix``) is put in front of each query.
    """
    queries, kept = [], []
    for i, statement in enumerate(statements):
        shuffled = list(examples)
        random.Random(seed + i).shuffle(shuffled)
        shots = "\n".join(shuffled)
        if statement in shots:
            continue
        queries.append(prefix + shots + "\n" + statement + question)
        kept.append(statement)
    return queries, kept


def center_per_dataset(acts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each ``[n_i, d]`` block minus its own mean (float64 mean; the input dtype is kept)."""
    out = []
    for block in acts:
        mean = block.to(torch.float64).mean(0)
        out.append((block.to(torch.float64) - mean).to(block.dtype))
    return out
