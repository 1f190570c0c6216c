"""The preflight's dataset checks: files exist, parse, and have the columns and labels needed.

The readers are the ones the claims use (:mod:`mechtests.data`), so a file that passes here
reads the same way later; their errors already name the file, the problem and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mechtests.errors import MechTestsError, PreflightError
from mechtests.preflight.checkpoints import CheckpointInfo

T = TypeVar("T")
# Token budget of a steering query beyond the few-shot block, the statement and the question
# (the <bos> and the tokens a template or prompt prefix may add).
_SPARE_TOKENS = 8


def _read(what: str, reader: Callable[[], T]) -> T:
    try:
        return reader()
    except MechTestsError as exc:
        raise PreflightError(f"preflight: {exc}") from None
    except UnicodeDecodeError as exc:
        raise PreflightError(
            f"preflight: {what} is not UTF-8 text (byte {exc.start}: {exc.reason}); expected a "
            "UTF-8 CSV/JSON file. Fix: re-save it as UTF-8."
        ) from None
    except OSError as exc:
        raise PreflightError(f"preflight: {what} cannot be read ({exc.strerror}: "
                             f"{exc.filename}). Fix: check the file and its permissions.") from None


def _both_labels(name: str, labels: Sequence[int], path: Path, role: str) -> None:
    present = sorted(set(labels))
    if present != [0, 1]:
        raise PreflightError(
            f"preflight: dataset {path} ({role}) has only label {present} in {len(labels)} rows; "
            "expected true (1) and false (0) statements (a probe or a direction needs both). "
            f"Fix: add statements of the other label to {name}, or choose another dataset."
        )


def check_datasets(family: Any, areas: Iterable[str], datasets_dir: Path | None,
                   infos: Sequence[CheckpointInfo]) -> bool:
    """Check every dataset ``areas`` need on ``family``; False when none was given (skips)."""
    from mechtests.data.refusal import load_refusal_splits
    from mechtests.data.sources import dataset_source

    areas = set(areas)
    source = _read("the datasets folder", lambda: dataset_source(family.datasets, datasets_dir))
    if source.root is None:
        return False  # claims that need the paper's data are skipped with that reason
    truth = family.truth
    statements: set[str] = set()
    if areas & {"truth", "confidence"}:
        statements.update([*truth.train_datasets, truth.heldout_dataset])
    if areas & {"knowledge", "crossmodel"}:
        statements.update(family.knowledge.datasets)
    for name in sorted(statements):
        _check_statements(source, name, "truth" in areas and name in
                          {*truth.train_datasets, truth.heldout_dataset})
    if "truth" in areas:
        _check_prompt_length(family, source, infos)
    if areas & {"refusal", "truth"}:  # truth.direction.beats_refusal reads them too
        _read("the refusal splits", lambda: load_refusal_splits(source))
    return True


def _check_statements(source: Any, name: str, needs_both_labels: bool) -> None:
    from mechtests.data.pairs import GROUPED_DATASETS, read_tulu_pairs
    from mechtests.data.statements import read_statements_csv

    path = _read(f"dataset {name}", lambda: source.statements_csv(name))
    if name in GROUPED_DATASETS:
        pairs = _read(str(path), lambda: read_tulu_pairs(path))
        if not pairs:
            raise PreflightError(f"preflight: dataset {path} has no (true, false) pairs; "
                                 "expected id,statement,label rows. Fix: restore the file.")
        return
    data = _read(str(path), lambda: read_statements_csv(path, name))
    if needs_both_labels:
        _both_labels(name, data.labels, path, "truth claims")


def _check_prompt_length(family: Any, source: Any, infos: Sequence[CheckpointInfo]) -> None:
    """The longest few-shot steering query fits every model's context window."""
    from mechtests.data.statements import load_few_shot, read_statements_csv

    truth = family.truth
    examples = _read("the few-shot samples", lambda: load_few_shot(source, truth.heldout_dataset))
    path = source.statements_csv(truth.heldout_dataset)
    heldout = _read(str(path), lambda: read_statements_csv(path, truth.heldout_dataset))
    _both_labels(truth.heldout_dataset, heldout.labels, path, "held-out set")
    longest = sorted(heldout.statements, key=len)[-8:]
    for info in infos:
        limit = info.max_positions
        if limit is None:
            continue
        shots = len(info.encode("\n".join(examples)))
        statement = max(len(info.encode("\n" + s + truth.question)) for s in longest)
        need = shots + statement + _SPARE_TOKENS
        if need > limit:
            raise PreflightError(
                f"preflight: the truth steering prompts of family {family.name!r} need about "
                f"{need} tokens ({len(examples)} few-shot examples + statement) but {info.where} "
                f"has max_position_embeddings {limit}; expected prompts that fit. Fix: use "
                "shorter few-shot examples in du2025/few_shot_samples.json or a model with a "
                "longer context."
            )
