"""Where a family's datasets come from.

Every dataset source has the layout of the paper's data folder (what ``mechtests datasets fetch``
writes;
see docs/claims.md)::

    <root>/du2025/<name>.csv                      statement,label[,...]
    <root>/du2025/few_shot_samples.json           [{dataset_name, few_shot_examples}]
    <root>/du2025/tulu_extracted.csv              id,statement,label (pairs per id)
    <root>/refusal_splits/du2025_refusal_splits.json
    <root>/advbench/harmful_behaviors.csv, <root>/alpaca/alpaca_no_input.json

``builtin:organism`` is the suite's own data in that layout (``fixtures/organism/datasets``);
``paper`` is the folder given by ``--mechtests-datasets``, else ``MECHTESTS_DATASETS``, else the
folder of the last complete ``mechtests datasets fetch`` (:mod:`mechtests.data.fetch`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mechtests.data.fetch import fetched_datasets_dir
from mechtests.errors import ConfigError, DatasetError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DATASETS_ENV = "MECHTESTS_DATASETS"


class DatasetsUnavailable(DatasetError):
    """The paper's datasets were not given; claims that need them are skipped with this reason."""


@dataclass(frozen=True)
class DatasetSource:
    """A folder with the paper's dataset layout."""

    name: str
    root: Path | None

    def path(self, relative: str) -> Path:
        """The file ``relative`` (e.g. ``du2025/cities.csv``), or a one-line error with the fix."""
        if self.root is None:
            raise DatasetsUnavailable(
                f"dataset {relative} needs the paper's datasets, which were not given. Fix: run "
                "`mechtests datasets fetch` once, or pass --mechtests-datasets DIR (or set "
                f"{DATASETS_ENV}) to a folder holding du2025/, refusal_splits/, advbench/ and "
                "alpaca/."
            )
        path = self.root / relative
        if not path.is_file():
            raise DatasetError(
                f"dataset file {path} does not exist (source {self.name!r}); expected the paper's "
                "layout (du2025/<name>.csv, refusal_splits/...). Fix: point --mechtests-datasets "
                "at the folder that holds du2025/."
            )
        return path

    def statements_csv(self, name: str) -> Path:
        return self.path(f"du2025/{name}.csv")


def dataset_source(spec: str, datasets_dir: Path | None) -> DatasetSource:
    """Resolve a family's ``datasets`` field."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        root = FIXTURES / name / "datasets"
        if not root.is_dir():
            raise DatasetError(
                f"built-in datasets {spec!r} are missing (looked in {root}). Fix: reinstall "
                "mechtests, or rebuild them with `mechtests organism build`."
            )
        return DatasetSource(spec, root)
    if spec == "paper":
        given = (
            datasets_dir
            or (Path(os.environ[DATASETS_ENV]) if os.environ.get(DATASETS_ENV) else None)
            or fetched_datasets_dir()
        )
        if given is not None and not given.is_dir():
            raise DatasetError(
                f"--mechtests-datasets {given} is not a directory. Fix: pass the folder that "
                "holds du2025/, refusal_splits/, advbench/ and alpaca/."
            )
        return DatasetSource(spec, given)
    raise ConfigError(
        f"datasets source {spec!r} is unknown; expected 'paper' or 'builtin:<name>'. "
        "Fix: correct the family's 'datasets' field."
    )
