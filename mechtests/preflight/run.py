"""The preflight: every input of a claim run checked once, before any model runs.

A claim run reads checkpoints, families, thresholds, datasets and options. Inputs that cannot
give a meaningful number (a post model of another width, readout strings of several tokens, a
held-out set with one label, ``--max-examples 0``, ``--mechtests-device cuda`` without CUDA)
stop the run here with one line (what, where, expected, got, fix) and exit code 4, instead of a
traceback per test or a silent number. It runs in the pytest controller before xdist starts its
workers, once per selected family, and reads files only: configs, safetensors headers,
tokenizers and dataset files (checkpoints of the built-in schemes are built first, as the run
would build them).

Checks (:mod:`mechtests.preflight.checkpoints`, :mod:`mechtests.preflight.datasets`):

* invocation: ``--base/--sft/--instruct`` at most once each, and only with ``--model-family``;
* options: ``--max-examples >= 1``, ``--gpus-per-worker >= 1``, CUDA present for
  ``--mechtests-device cuda``, ``--claim-report`` and the cache are writable directories;
* per family, for the claims that ``-k`` / ``-m`` select: every checkpoint resolves and has
  config.json, readable safetensors and a tokenizer; each model has the base's width and depth
  (and vocabulary for knowledge / cross-model claims); layers exist; readouts are one token in
  every model; refusal templates have ``{instruction}``; datasets exist, parse, have both labels
  where a probe needs them, and the few-shot prompts fit the context window.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mechtests.errors import PreflightError
from mechtests.families import parse_max_examples
from mechtests.preflight.checkpoints import (
    READOUT_AREAS,
    CheckpointInfo,
    check_layers,
    check_pair,
    check_readouts,
    check_templates,
    inspect_checkpoint,
)
from mechtests.preflight.datasets import check_datasets

SUITE_DIR = Path(__file__).resolve().parent.parent / "suite"
SUITE_MODULE = "mechtests.suite"
TEST_NAME = "test_claim_holds"
REPLACE_OPTIONS = ("--base", "--sft", "--instruct")


def _fail(message: str) -> PreflightError:
    return PreflightError(f"preflight: {message}")


def check_invocation(args: Sequence[str]) -> None:
    """``--base/--sft/--instruct`` once each, only with one explicit ``--model-family``."""
    families = [a for a in args if a == "--model-family" or a.startswith("--model-family=")]
    for option in REPLACE_OPTIONS:
        given = [a for a in args if a == option or a.startswith(option + "=")]
        if len(given) > 1:
            raise _fail(f"{option} is given {len(given)} times; expected at most once (only the "
                        f"last would be used). Fix: pass {option} PATH once.")
        if given and len(families) != 1:
            got = "no --model-family" if not families else f"{len(families)} --model-family"
            raise _fail(f"{option} replaces a checkpoint of one family, but the run has {got}; "
                        f"expected exactly one. Fix: add --model-family NAME (the family whose "
                        f"{option[2:]} checkpoint you replace).")


def check_options(config: Any, state: Any) -> None:
    """Numeric options in range, the device present, report and cache folders writable."""
    opt = config.getoption
    try:
        parse_max_examples(opt("--max-examples"))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    gpus = opt("--gpus-per-worker")
    if gpus is not None and gpus < 1:
        raise _fail(f"--gpus-per-worker is {gpus}; expected >= 1. Fix: pass --gpus-per-worker 1.")
    if opt("--mechtests-device") == "cuda":
        _check_cuda()
    datasets = opt("--mechtests-datasets")
    if datasets and not Path(datasets).is_dir():
        raise _fail(f"--mechtests-datasets {datasets} is not a directory; expected the folder "
                    "holding du2025/, refusal_splits/, advbench/ and alpaca/. Fix: correct it.")
    _check_folder("--claim-report", state.report_dir, create=False)
    _check_folder("--mechtests-cache", state.cache_dir, create=True)


def _check_cuda() -> None:
    from mechtests.engine.devices import visible_gpus

    fix = ("Fix: run with --mechtests-device cpu (or auto, which uses CUDA only when present), "
           "or on a machine with an NVIDIA GPU and a CUDA build of torch.")
    if not visible_gpus():
        raise _fail("--mechtests-device cuda, but no CUDA device is visible (CUDA_VISIBLE_DEVICES "
                    f"/ nvidia-smi); expected at least one GPU. {fix}")
    import torch

    if not torch.cuda.is_available():
        raise _fail(f"--mechtests-device cuda, but this torch ({torch.__version__}) cannot use "
                    f"the GPU (torch.cuda.is_available() is False); expected a CUDA build. {fix}")


def _check_folder(option: str, path: Path, create: bool) -> None:
    if path.exists() and not path.is_dir():
        raise _fail(f"{option} {path} is a file; expected a directory. Fix: pass a directory "
                    "path (it is created when missing).")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if create and not path.exists():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(f"{option} {path} cannot be created ({exc.strerror}). Fix: point it at a "
                        "writable directory.") from None
        existing = path
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise _fail(f"{option} {path} is not writable (checked {existing}); expected a writable "
                    "directory. Fix: point it at a writable directory, or fix its permissions.")
    if create:
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise _fail(f"{option} {path} is not writable ({exc.strerror}). Fix: point it at a "
                        "writable directory with free space.") from None


def targets_claim_suite(args: Iterable[str]) -> bool:
    """Whether the run collects the packaged claim suite (``--pyargs mechtests.suite`` or its
    path): only then are checkpoints and datasets inputs of the run."""
    for arg in args:
        target = arg.split("::", 1)[0]
        if target == SUITE_MODULE or target.startswith(SUITE_MODULE + "."):
            return True
        try:
            path = Path(target).resolve()
        except (OSError, ValueError):
            continue
        if path == SUITE_DIR or SUITE_DIR in path.parents:
            return True
    return False


def selected(test_id: str, keyword: str, markexpr: str) -> bool:
    """Whether ``-k keyword`` / ``-m markexpr`` keep the claim test ``test_id`` (pytest's
    case-insensitive substring match on the test's names; an expression pytest will reject
    later keeps everything)."""
    from _pytest.mark.expression import Expression

    names = (SUITE_MODULE, "suite", "test_claims.py", TEST_NAME, f"{TEST_NAME}[{test_id}]")

    def by_name(sub: str, /, **_: str | int | bool | None) -> bool:
        return any(sub.lower() in name.lower() for name in names)

    def by_mark(name: str, /, **_: str | int | bool | None) -> bool:
        return name in ("claim", "parametrize")

    try:
        keep = not keyword or Expression.compile(keyword).evaluate(by_name)
        return keep and (not markexpr or Expression.compile(markexpr).evaluate(by_mark))
    except Exception:
        return True


def run_preflight(config: Any, state: Any) -> None:
    """Check the run's options and every selected family; raise :class:`PreflightError`."""
    from mechtests.measures.runner import ClaimCase

    check_invocation(list(config.invocation_params.args))
    check_options(config, state)
    keyword = str(config.getoption("keyword", "") or "")
    markexpr = str(config.getoption("markexpr", "") or "")
    for name, family in sorted(state.families.items()):
        cases = [ClaimCase(name, pair, claim) for claim in state.claims for pair in claim.pairs
                 if all(role in family.models for role in pair)]
        cases = [c for c in cases if selected(c.test_id, keyword, markexpr)]
        check_rules(state.thresholds, name, sorted({c.claim.id for c in cases}))
        if cases:
            check_family(family, {c.claim.area for c in cases},
                         {role for c in cases for role in c.pair}, state)


def check_rules(thresholds: Any, family: str, claim_ids: Sequence[str]) -> None:
    """Every selected claim has a rule in the thresholds file (the other direction, a rule for
    no claim or family, is checked when the file loads)."""
    missing = [cid for cid in claim_ids if cid not in thresholds.rules]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise _fail(f"thresholds file {thresholds.path} has no rule for {len(missing)} claim(s) "
                    f"selected on {family} ({shown}); expected one rule per claim. Fix: add "
                    "'claims: {<id>: {op, value, control_margin, source}}' for each, or "
                    "deselect them with -k.")


def check_family(family: Any, areas: set[str], roles: set[str], state: Any) -> None:
    """Checkpoints, pairs, layers, readouts, templates and datasets of one family."""
    if family.has_control:
        roles = roles | {"control"}
    infos: dict[str, CheckpointInfo] = {}
    for role in sorted(roles):
        info = inspect_checkpoint(f"{family.name}/{role}", family.models[role].ref,
                                  state.cache_dir)
        if info is not None:
            infos[role] = info
    base = infos.get("base")
    for role, info in sorted(infos.items()):
        check_layers(family, info)
        if areas & READOUT_AREAS:
            check_readouts(family, info)
        if base is not None and role != "base":
            check_pair(base, info, areas)
    if areas & {"refusal", "truth"}:
        check_templates(family, sorted(roles))
    check_datasets(family, areas, state.datasets_dir, list(infos.values()))
