"""The mechtests pytest plugin: options, parametrization, recording and the claim matrix.

Loaded through the ``pytest11`` entry point, so an installed mechtests gives its options and
fixtures to any test suite. Import-light and lazy on purpose: ``pytest --help`` and
``--collect-only`` never import torch (models load inside fixtures and measure functions), and a
pytest run that neither sets a mechtests option nor targets the claim suite nor collects a
claim test reads no YAML at all: the state (families, claims, thresholds) is built on first use.

Flow: ``pytest_configure`` validates the options when the run asks for mechtests (an unknown
family is a ``UsageError``);
``pytest_generate_tests`` parametrizes every test that takes ``claim_case`` over
(family, model pair, claim), sorted, with strict xfails from ``thresholds.yaml``; the
``claim_runner`` fixture measures and judges; results ride on ``user_properties`` to the xdist
controller, which prints the matrix and writes ``reports/claim_matrix.{json,md}``.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mechtests.checkpoints.cache_dir import CACHE_ENV, default_cache_dir
from mechtests.errors import ConfigError, MechTestsError
from mechtests.plugin.recorder import RECORD_KEY, Recorder

if TYPE_CHECKING:
    from mechtests.measures.runner import ClaimCase, ClaimRunner

OPT_FAMILY = "--model-family"
REPORT_FILES = ("claim_matrix.json", "claim_matrix.md", "claim_matrix.html")
_STATE = pytest.StashKey["_State"]()
# option name -> default, filled by pytest_addoption: an option away from its default means the
# run asks for mechtests (see _requested)
OPTION_DEFAULTS: dict[str, Any] = {}


class ClaimFailed(AssertionError):
    """A claim's measurement did not clear its threshold or its control (a finding)."""


class ClaimInconclusive(Exception):
    """The experiment could not decide the claim (a precondition failed, or the interval
    contains the threshold): not a finding, and not a pass either. Deliberately not a
    :class:`ClaimFailed`, so it never counts as an expected failure (XFAIL)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    # Help-text style: what it does, then "Default: ...". Every option of the group has one.
    group = _RecordingGroup(parser.getgroup("mechtests", "mechtests: post-training claim tests"))
    group.addoption(OPT_FAMILY, action="append", default=None, metavar="NAME",
                    help="Model family to test; repeat for several (see families.yaml: organism, "
                         "tiny, llama31, mistral, llama2-13b, llama2-7b, gemma2-9b, qwen15-0.5b). "
                         "Default: organism.")
    group.addoption("--families-file", default=None, metavar="PATH",
                    help="Extra YAML file of families (adds or replaces entries of the packaged "
                         "families.yaml). Default: none.")
    group.addoption("--thresholds", default=None, metavar="PATH",
                    help="Thresholds file with each claim's rule and source. "
                         "Default: the packaged thresholds.yaml.")
    for role in ("base", "sft", "instruct"):
        group.addoption(f"--{role}", default=None, metavar="PATH",
                        help=f"Replace the selected family's {role} checkpoint with this local "
                             "directory or cached hub id (check a new checkpoint). Default: none.")
    group.addoption("--mechtests-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="Device for models: auto = cuda when available. Default: auto.")
    group.addoption("--mechtests-dtype", default="float32",
                    choices=("float32", "bfloat16", "float16"),
                    help="Model dtype; the paper ran bf16. Default: float32.")
    group.addoption("--mechtests-backend", default="hf", choices=("hf", "transformer-lens"),
                    help="hf = plain PyTorch hooks on the HF model; transformer-lens = TL 4.x "
                         "TransformerBridge over the same model. Default: hf.")
    group.addoption("--mechtests-cache", default=None, metavar="DIR",
                    help=f"Cache for activations and built checkpoints. Default: ${CACHE_ENV} or "
                         "the user cache dir (~/.cache/mechtests).")
    group.addoption("--mechtests-datasets", default=None, metavar="DIR",
                    help="Folder with the paper's datasets (du2025/, refusal_splits/, advbench/, "
                         "alpaca/) for real families. Default: $MECHTESTS_DATASETS, else the "
                         "folder of the last `mechtests datasets fetch`, else none (claims that "
                         "need them are skipped with that reason).")
    group.addoption("--claim-report", default="reports", metavar="DIR",
                    help="Where the claim matrix (claim_matrix.json/.md) and plots go. "
                         "Default: reports/ (relative to the current directory).")
    group.addoption("--max-examples", default=None, metavar="N|all",
                    help="Subsample every dataset to at most N examples, drawn with a fixed "
                         "seed (recorded in the report); 'all' runs every example. Default: the "
                         "family's max_examples in families.yaml (gemma3-270m: 40, a CPU-sized "
                         "sample), else all.")
    # ---- reports, baselines, scale-out (mechtests/report/, plugin/xdist.py) ----
    group.addoption("--baseline", default=None, metavar="FILE",
                    help="Compare every metric with this stored run; a change beyond the "
                         "claim's tolerance (thresholds.yaml) or a result not in FILE fails "
                         "the run. A missing FILE is written and fails. Default: none.")
    group.addoption("--update-baseline", action="store_true", default=False,
                    help="Write --baseline FILE from this run instead of comparing. "
                         "Default: off.")
    group.addoption("--baseline-prune", action="store_true", default=False,
                    help="With --update-baseline: drop stored results that this run did not "
                         "produce (by default they are kept, so a partial run never shrinks the "
                         "baseline). Default: off.")
    group.addoption("--allow-inconclusive", action="store_true", default=False,
                    help="Let INCONCLUSIVE claims (a failed precondition, or an interval that "
                         "contains the threshold) pass the release gate: they are reported as "
                         "skipped instead of failed. Default: off (an unverified claim fails "
                         "the run).")
    group.addoption("--mechtests-dist", default="family", choices=("family", "xdist"),
                    help="With -n: family = one worker runs all claim tests of a family "
                         "(loads its models once); xdist = xdist's own --dist. Default: family.")
    group.addoption("--gpus-per-worker", type=int, default=1, metavar="K",
                    help="With -n: GPUs given to each worker (CUDA_VISIBLE_DEVICES); -n auto "
                         "starts visible GPUs // K workers. Default: 1.")


class _RecordingGroup:
    """An option group that also records each option's default in :data:`OPTION_DEFAULTS`."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def addoption(self, name: str, **kwargs: Any) -> None:
        default = kwargs.get("default", False if kwargs.get("action") == "store_true" else None)
        OPTION_DEFAULTS[name] = default
        self.group.addoption(name, **kwargs)


class _State:
    """Per-process plugin state (families, claims, thresholds, records); built on first use
    (:func:`plugin_state`)."""

    def __init__(self, config: pytest.Config) -> None:
        from mechtests.claims.table import load_claims
        from mechtests.claims.thresholds import load_thresholds
        from mechtests.families import load_families, select_family
        from mechtests.families.shape import LAYERS_ENV, parse_shape_layers

        opt = config.getoption
        families_file = opt("--families-file")
        depth = parse_shape_layers(os.environ.get(LAYERS_ENV))  # real-shape families' depth
        all_families = load_families(Path(families_file) if families_file else None, depth)
        names = sorted(set(opt(OPT_FAMILY) or ["organism"]))
        self.families = {}
        for name in names:
            family = select_family(all_families, name)
            for role in ("base", "sft", "instruct"):
                if opt(f"--{role}"):
                    family = family.with_checkpoint(role, opt(f"--{role}"))
            self.families[name] = family
        self.claims = load_claims()
        path = opt("--thresholds")
        self.thresholds = load_thresholds(Path(path) if path else None,
                                          claim_ids=[c.id for c in self.claims],
                                          families=list(all_families))
        self.report_dir = Path(opt("--claim-report"))
        cache = opt("--mechtests-cache")
        self.cache_dir = Path(cache) if cache else default_cache_dir()
        datasets = opt("--mechtests-datasets")
        self.datasets_dir = Path(datasets) if datasets else None
        self.records: list[dict[str, Any]] = []
        self.expected: int | None = None  # claim tests collected (None: not known)
        self.incomplete: str | None = None  # why the run stopped early (set at session end)
        self.write_error: str | None = None  # why the reports could not be written
        self.written: list[Path] = []
        self.runner: ClaimRunner | None = None

    def make_runner(self, config: pytest.Config) -> ClaimRunner:
        from mechtests.families import parse_max_examples
        from mechtests.measures.context import RunOptions
        from mechtests.measures.runner import ClaimRunner

        if self.runner is None:
            worker = os.environ.get("PYTEST_XDIST_WORKER")
            options = RunOptions(
                cache_dir=self.cache_dir,
                report_dir=self.report_dir,
                device=config.getoption("--mechtests-device"),
                dtype=config.getoption("--mechtests-dtype"),
                backend=config.getoption("--mechtests-backend"),
                max_examples=parse_max_examples(config.getoption("--max-examples")),
                datasets_dir=self.datasets_dir,
                progress=worker is None and not os.environ.get("CI"),
            )
            self.runner = ClaimRunner(dict(self.families), self.thresholds, options)
        return self.runner


def plugin_state(config: pytest.Config) -> _State:
    """This process's state, built on first use; a configuration error is a ``UsageError``."""
    state = config.stash.get(_STATE, None)
    if state is None:
        try:
            state = _State(config)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[_STATE] = state
    return state


def _requested(config: pytest.Config) -> bool:
    """Whether the run asks for mechtests up front: a mechtests option away from its default,
    or the claim suite among its targets. Otherwise the state waits for a claim test."""
    from mechtests.preflight import targets_claim_suite

    given = any(config.getoption(name) != default for name, default in OPTION_DEFAULTS.items())
    return given or targets_claim_suite(config.args)


def _selected_family_names(config: pytest.Config) -> list[str]:
    """The families this run names (no file read: the scheduler only needs their names)."""
    state = config.stash.get(_STATE, None)
    return list(state.families) if state else sorted(set(config.getoption(OPT_FAMILY) or
                                                         ["organism"]))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "claim(id): a mechtests claim test (added automatically)")
    if config.getoption("help", False):
        return
    controller = not hasattr(config, "workerinput")  # the controller, or a run without xdist
    state = plugin_state(config) if _requested(config) else None
    if controller:
        recorder = Recorder(peek=lambda: config.stash.get(_STATE, None),
                            load=lambda: plugin_state(config))
        config.pluginmanager.register(recorder, "mechtests-recorder")
        _one_line_failures(config)
    # ---- worker GPU pinning + family scheduling, Allure attachments, baseline gate
    from mechtests.plugin.allure import register_allure
    from mechtests.plugin.baseline_gate import register_baseline
    from mechtests.plugin.xdist import register_xdist

    register_xdist(config, lambda: _selected_family_names(config))
    register_allure(config)
    if controller and state is not None:  # --baseline is an option: given, the state is built
        register_baseline(config, state)


def _runs_claim_suite(config: pytest.Config) -> bool:
    from mechtests.preflight import targets_claim_suite

    return not config.getoption("collectonly") and targets_claim_suite(config.args)


def _one_line_failures(config: pytest.Config) -> None:
    """A claim run prints the matrix and one line per FAIL/ERROR cell (pytest's short summary),
    not a traceback per cell; ``-v``, ``--tb`` or ``--full-trace`` bring the tracebacks back."""
    args = config.invocation_params.args
    asked = any(str(a).startswith("--tb") for a in args) or config.getoption("fulltrace")
    from mechtests.preflight import targets_claim_suite

    only_claims = bool(config.args) and all(targets_claim_suite([a]) for a in config.args)
    if _runs_claim_suite(config) and only_claims and not asked and config.get_verbosity() < 1:
        config.option.tbstyle = "no"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """The preflight (mechtests.preflight), once, in the controller, before xdist starts
    workers: a bad input is one ``ERROR:`` line and exit code 4. Then the previous run's
    reports are removed, so a run that dies leaves no report that looks current."""
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is None or hasattr(config, "workerinput") or not _runs_claim_suite(config):
        return
    from mechtests.preflight import run_preflight

    try:
        run_preflight(config, state)
    except MechTestsError as exc:
        if config.getoption("fulltrace"):
            traceback.print_exc()
        raise pytest.UsageError(str(exc)) from None
    for name in REPORT_FILES:
        (state.report_dir / name).unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per visible GPU, else max(1, cores // 2)."""
    from mechtests.plugin.xdist import auto_num_workers

    return auto_num_workers(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(_STATE, None)
    if state is None:
        return []
    return [
        f"mechtests: families {', '.join(state.families)}; thresholds {state.thresholds.path} "
        f"(sha256 {state.thresholds.sha256[:12]}); cache {state.cache_dir}"
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "claim_case" not in metafunc.fixturenames:
        return
    from mechtests.measures.runner import ClaimCase

    state = plugin_state(metafunc.config)
    params = []
    for name, family in sorted(state.families.items()):
        for claim in state.claims:
            for pair in claim.pairs:
                if not all(role in family.models for role in pair):
                    continue
                case = ClaimCase(name, pair, claim)
                marks: list[pytest.MarkDecorator] = [pytest.mark.claim(claim.id)]
                reason = state.thresholds.expected_failure(claim.id, name)
                if reason and not family.random_weights:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=ClaimFailed))
                params.append(pytest.param(case, id=case.test_id, marks=marks))
    metafunc.parametrize("claim_case", params)


@pytest.fixture(scope="session")
def claim_runner(request: pytest.FixtureRequest) -> Any:
    """The per-process claim runner (one loaded model at a time). Read-only use only."""
    runner = plugin_state(request.config).make_runner(request.config)
    yield runner
    runner.close()


@pytest.fixture
def check_claim(claim_runner: ClaimRunner, record_property: Any,
                request: pytest.FixtureRequest) -> Any:
    """Measure, judge and record a :class:`ClaimCase`; fail with the one-line reason."""
    from mechtests.claims.model import Verdict
    from mechtests.data.sources import DatasetsUnavailable

    def check(case: ClaimCase) -> None:
        __tracebackhide__ = True
        spec = claim_runner.thresholds.spec(case.claim.id, case.family)
        try:
            record, judgement = claim_runner.run(case)
        except DatasetsUnavailable as exc:
            record = claim_runner.base_record(case, spec)
            record.verdict, record.message = Verdict.SKIP.value, str(exc)
            record_property(RECORD_KEY, json.dumps(record.to_json()))
            pytest.skip(str(exc))
        except Exception as exc:
            record = claim_runner.base_record(case, spec)
            record.message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            record_property(RECORD_KEY, json.dumps(record.to_json()))
            raise
        record_property(RECORD_KEY, json.dumps(record.to_json()))
        if judgement.verdict is Verdict.FAIL:
            __tracebackhide__ = True
            raise ClaimFailed(
                f"{case.claim.id} on {case.family} ({'->'.join(case.pair)}): "
                f"{case.claim.metric}={record.metric:.4g}; {judgement.message} "
                f"(thresholds.yaml: {record.source})"
            )
        if judgement.verdict is Verdict.ERROR:
            pytest.fail(f"{case.claim.id} on {case.family}: {judgement.message}", pytrace=False)
        if judgement.verdict is Verdict.INCONCLUSIVE:
            where = f"{case.claim.id} on {case.family} ({'->'.join(case.pair)})"
            if request.config.getoption("--allow-inconclusive"):
                pytest.skip(f"INCONCLUSIVE (allowed by --allow-inconclusive): {where}: "
                            f"{judgement.message}")
            raise ClaimInconclusive(f"{where}: {judgement.message} (pass --allow-inconclusive "
                                    "to let INCONCLUSIVE claims through the gate)")

    return check


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group claim tests by family, then area, so each worker loads each model few times."""

    def key(item: pytest.Item) -> tuple[int, str, str, str]:
        callspec = getattr(item, "callspec", None)
        case: Any = callspec.params.get("claim_case") if callspec else None
        if not hasattr(case, "claim"):
            return (0, "", "", "")
        return (1, case.family, case.claim.area, case.test_id)

    items.sort(key=key)
