"""Refusal data: AdvBench and Alpaca loaders, the paper's seeded split, templates (paper code
Refusal/utils.py).

Du et al. (``Refusal/utils.py``) take the ``goal`` column of AdvBench's ``harmful_behaviors.csv``
(520 rows) as harmful instructions and the Alpaca rows whose ``input`` is empty (31,323) as
harmless ones, and split each with ``sklearn.model_selection.train_test_split(test_size=0.2,
random_state=42)``. Directions are extracted from ``train[:128]``; evaluation uses ``test[:100]``.

:func:`paper_split` re-implements that split without sklearn: ``ShuffleSplit`` draws
``numpy.random.RandomState(42).permutation(n)``, takes the first ``ceil(0.2 n)`` indices as the
test set and the rest, in permutation order, as the training set. The result is checked against
the reconstruction in ``refusal_splits/du2025_refusal_splits.json`` by the unit tests.

Every dataset source (the organism's built-in data, or the paper's folder) ships the split as
``refusal_splits/du2025_refusal_splits.json`` with the keys ``harmful_train_128``,
``harmless_train_128``, ``harmful_test_100`` and ``harmless_test_100``; :func:`load_refusal_splits`
reads it.

Example:
    >>> train, test = paper_split(list("abcdefghij"))
    >>> len(train), len(test)
    (8, 2)
    >>> format_prompts("<user> {instruction} <assistant>", ["how do i bake a cake ?"])
    ['<user> how do i bake a cake ? <assistant>']
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mechtests.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from mechtests.data.sources import DatasetSource

__all__ = [
    "SPLITS_FILE",
    "RefusalSplits",
    "build_paper_splits",
    "format_prompts",
    "load_advbench",
    "load_alpaca_no_input",
    "load_refusal_splits",
    "paper_split",
    "read_splits_json",
    "template_suffix",
]

SPLITS_FILE = "refusal_splits/du2025_refusal_splits.json"
_SPLIT_KEYS = ("harmful_train_128", "harmless_train_128", "harmful_test_100", "harmless_test_100")
T = TypeVar("T")


@dataclass(frozen=True)
class RefusalSplits:
    """Harmful / harmless instructions for extraction (train) and evaluation (test)."""

    harmful_train: tuple[str, ...]
    harmless_train: tuple[str, ...]
    harmful_test: tuple[str, ...]
    harmless_test: tuple[str, ...]


def load_advbench(path: Path) -> list[str]:
    """The ``goal`` column of AdvBench's ``harmful_behaviors.csv``, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"AdvBench file {path} does not exist; expected harmful_behaviors.csv with a 'goal' "
            "column. Fix: pass the path of advbench/harmful_behaviors.csv."
        )
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "goal" not in reader.fieldnames:
            raise DatasetError(
                f"AdvBench file {path} has columns {reader.fieldnames}; expected a 'goal' column. "
                "Fix: use llm-attacks' data/advbench/harmful_behaviors.csv."
            )
        return [row["goal"] for row in reader]


def load_alpaca_no_input(path: Path) -> list[str]:
    """Alpaca instructions whose ``input`` is empty (the paper's harmless set), in file order.

    Accepts the full ``alpaca_data.json`` (rows with ``instruction``/``input``/``output``; rows
    with a non-empty ``input`` are dropped, as in the paper) or an already filtered list of
    ``{"instruction": ...}`` rows (andyrdt/refusal_direction's ``alpaca.json``).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"Alpaca file {path} does not exist; expected a JSON list of rows with "
            "'instruction'. Fix: pass the path of alpaca/alpaca_no_input.json or alpaca_data.json."
        )
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"Alpaca file {path} is not valid JSON ({exc}).") from None
    if not isinstance(rows, list) or (rows and not isinstance(rows[0], dict)):
        raise DatasetError(
            f"Alpaca file {path} must be a JSON list of objects with 'instruction'. "
            "Fix: use tatsu-lab/alpaca's alpaca_data.json."
        )
    out = []
    for i, row in enumerate(rows):
        if "instruction" not in row:
            raise DatasetError(f"Alpaca file {path}: row {i} has no 'instruction' key.")
        if str(row.get("input") or "").strip() == "":
            out.append(str(row["instruction"]))
    return out


def paper_split(
    items: Sequence[T], test_size: float = 0.2, seed: int = 42
) -> tuple[list[T], list[T]]:
    """``train_test_split(items, test_size=test_size, random_state=seed)`` without sklearn."""
    import numpy as np

    n = len(items)
    n_test = math.ceil(test_size * n)
    perm = np.random.RandomState(seed).permutation(n)
    test = [items[int(i)] for i in perm[:n_test]]
    train = [items[int(i)] for i in perm[n_test:]]
    return train, test


def build_paper_splits(
    advbench_csv: Path, alpaca_json: Path, n_train: int = 128, n_test: int = 100
) -> RefusalSplits:
    """The paper's splits rebuilt from the raw files: ``train[:n_train]``, ``test[:n_test]``."""
    harmful_train, harmful_test = paper_split(load_advbench(advbench_csv))
    harmless_train, harmless_test = paper_split(load_alpaca_no_input(alpaca_json))
    return RefusalSplits(
        harmful_train=tuple(harmful_train[:n_train]),
        harmless_train=tuple(harmless_train[:n_train]),
        harmful_test=tuple(harmful_test[:n_test]),
        harmless_test=tuple(harmless_test[:n_test]),
    )


def read_splits_json(path: Path) -> RefusalSplits:
    """A splits file with the four ``du2025_refusal_splits.json`` keys."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"refusal splits {path} are not valid JSON ({exc}).") from None
    missing = [k for k in _SPLIT_KEYS if not isinstance(raw.get(k), list) or not raw[k]]
    if missing:
        raise DatasetError(
            f"refusal splits {path} lack non-empty lists {missing}; expected keys "
            f"{list(_SPLIT_KEYS)}. Fix: regenerate the file with build_paper_splits()."
        )
    return RefusalSplits(*(tuple(str(x) for x in raw[k]) for k in _SPLIT_KEYS))


def load_refusal_splits(source: DatasetSource) -> RefusalSplits:
    """The family's refusal splits (``refusal_splits/du2025_refusal_splits.json`` of its source)."""
    return read_splits_json(source.path(SPLITS_FILE))


def format_prompts(template: str, instructions: Sequence[str]) -> list[str]:
    """Each instruction put into ``template`` at ``{instruction}`` (no other field is filled)."""
    if "{instruction}" not in template:
        raise ConfigError(
            f"refusal template {template!r} has no '{{instruction}}' field. Fix: add it to the "
            "family's refusal.templates."
        )
    return [template.replace("{instruction}", inst) for inst in instructions]


def template_suffix(template: str) -> str:
    """The part of ``template`` after the instruction (Arditi et al.'s end-of-instruction text)."""
    return template.split("{instruction}", 1)[1] if "{instruction}" in template else ""
