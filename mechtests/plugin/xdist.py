"""Scale-out with pytest-xdist: how many workers ``-n auto`` starts, which GPU each one gets,
and which tests each one runs.

Worker count (``pytest_xdist_auto_num_workers``, only for ``-n auto``):

* ``$PYTEST_XDIST_AUTO_NUM_WORKERS`` set: that number (xdist's own override, kept).
* GPUs visible (and ``--mechtests-device`` is not ``cpu``): one worker per
  ``--gpus-per-worker`` GPUs (default 1), so ``len(gpus) // gpus_per_worker``, at least 1.
* No GPU: ``max(1, cores // 2)``, where cores are the CPUs this process may run on. Every
  worker is a full torch process holding its own copy of a model; half the cores leaves room
  for the controller, tokenizers and torch's own threads, and each worker gets
  ``OMP_NUM_THREADS = cores // workers`` so the workers together do not oversubscribe.

GPU discovery never imports torch when there is nothing to find: ``$CUDA_VISIBLE_DEVICES`` is
read first (empty or ``-1`` = no GPU); without it ``nvidia-smi -L`` is asked; torch's
``cuda.device_count()`` is consulted only when NVIDIA device files exist but ``nvidia-smi``
does not.

Pinning: the controller gives worker ``gwN`` the GPUs ``N*k .. N*k+k-1`` of the visible list
(modulo the list when ``-n`` asks for more workers than there are GPU slots) through xdist's
``workerinput``; the worker sets ``CUDA_VISIBLE_DEVICES`` to them in ``pytest_configure``,
before anything initialises CUDA, so inside a worker the model lives on ``cuda:0`` (or is
spread over its ``k`` GPUs).

Distribution: with ``-n`` and no explicit ``--dist`` (xdist's ``load``), the
:class:`FamilyScheduling` scheduler sends all claim tests of one family to one worker, so one
worker loads one family's models instead of every worker loading every model. It replaces
``--dist loadgroup`` + ``xdist_group``: on pytest 9.2 loadgroup no longer groups (it mutates
the legacy ``_nodeid``, which pytest 9.2's structured node ids ignore; pytest-xdist #1386), and
the tests are silently spread round-robin. ``--mechtests-dist xdist`` restores xdist's own
scheduling. Tests that are not claim tests are spread one by one, as ``--dist load`` does.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from mechtests.engine.devices import visible_gpus

__all__ = [
    "FamilyScheduling",
    "XdistSupport",
    "auto_num_workers",
    "choose_workers",
    "cpu_cores",
    "devices_for_worker",
    "family_pattern",
    "pin_worker",
    "register_xdist",
    "scope_of",
    "visible_gpus",
]

OPT_DIST = "--mechtests-dist"
OPT_GPUS_PER_WORKER = "--gpus-per-worker"
_INPUT_DEVICES = "mechtests_cuda_visible_devices"
_INPUT_THREADS = "mechtests_threads"
_DECISION = pytest.StashKey[str]()


def cpu_cores() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_workers(gpus: int, cores: int, gpus_per_worker: int = 1) -> int:
    """The ``-n auto`` rule (module docstring).

    Example:
        >>> choose_workers(gpus=0, cores=16), choose_workers(gpus=1, cores=16)
        (8, 1)
        >>> choose_workers(gpus=8, cores=16), choose_workers(gpus=8, cores=16, gpus_per_worker=2)
        (8, 4)
    """
    if gpus > 0:
        return max(1, gpus // max(1, gpus_per_worker))
    return max(1, cores // 2)


def _gpus_per_worker(config: pytest.Config) -> int:
    value = int(config.getoption(OPT_GPUS_PER_WORKER, 1) or 1)
    if value < 1:
        raise pytest.UsageError(
            f"{OPT_GPUS_PER_WORKER} must be >= 1 (got {value}). Fix: pass 1, or the number of "
            "GPUs one model needs."
        )
    return value


def _gpus_for(config: pytest.Config) -> list[str]:
    if config.getoption("--mechtests-device", "auto") == "cpu":
        return []
    return visible_gpus()


def auto_num_workers(config: pytest.Config) -> int:
    """Implementation of xdist's ``pytest_xdist_auto_num_workers`` (module docstring)."""
    override = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").strip()
    if override.isdigit():
        config.stash[_DECISION] = f"-n auto: {override} workers ($PYTEST_XDIST_AUTO_NUM_WORKERS)"
        return int(override)
    gpus = _gpus_for(config)
    per = _gpus_per_worker(config)
    cores = cpu_cores()
    workers = choose_workers(len(gpus), cores, per)
    if gpus:
        why = f"{len(gpus)} GPU(s) visible, {per} per worker"
    else:
        why = f"no GPU, {cores} CPU core(s) -> cores // 2"
    config.stash[_DECISION] = f"-n auto: {workers} worker(s) ({why})"
    return workers


def devices_for_worker(index: int, gpus: Sequence[str], gpus_per_worker: int = 1) -> list[str]:
    """The GPUs worker ``gw<index>`` owns.

    Example:
        >>> devices_for_worker(1, ["0", "1", "2", "3"], 2)
        ['2', '3']
        >>> devices_for_worker(3, ["0", "1"])  # more workers than GPUs: they share
        ['1']
    """
    if not gpus:
        return []
    per = max(1, min(gpus_per_worker, len(gpus)))
    slots = max(1, len(gpus) // per)
    start = (index % slots) * per
    return list(gpus[start:start + per])


def _worker_index(workerid: str) -> int:
    digits = re.sub(r"\D", "", workerid)
    return int(digits) if digits else 0


def pin_worker(config: pytest.Config) -> None:
    """On an xdist worker: apply the GPU set and thread count the controller chose."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    devices = workerinput.get(_INPUT_DEVICES)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    threads = workerinput.get(_INPUT_THREADS)
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if "torch" in sys.modules:  # imported early by a conftest: set it directly
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def family_pattern(families: Iterable[str], roles: Iterable[str]) -> re.Pattern[str]:
    """Matches a claim test's parameter id ``<family>-<ref>_<post>-<claim>`` (plugin
    ``ClaimCase.test_id``) and captures the family; longest family names first, so
    ``llama2-13b`` is not read as ``llama2``."""
    names = "|".join(re.escape(f) for f in sorted(families, key=lambda f: (-len(f), f)))
    role = "|".join(re.escape(r) for r in sorted(set(roles)))
    if not names or not role:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile(rf"(?:^|-)(?P<family>{names})-(?:{role})_(?:{role})-")


class XdistSupport:
    """Controller-side xdist hooks (registered by the plugin only when xdist is active)."""

    def __init__(self, config: pytest.Config, family_names: Callable[[], Iterable[str]]) -> None:
        self.config = config
        self.family_names = family_names  # asked when the scheduler is made, not before
        self._gpus: list[str] | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        """Matches the claim tests of the run's families (any model role)."""
        from mechtests.families.model import ROLE_ORDER

        return family_pattern(self.family_names(), ROLE_ORDER)

    def gpus(self) -> list[str]:
        if self._gpus is None:
            self._gpus = _gpus_for(self.config)
        return self._gpus

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Tell each worker its GPU(s), or on CPU its share of the cores."""
        workerid = str(node.workerinput.get("workerid", node.gateway.id))
        gpus = self.gpus()
        if gpus:
            per = _gpus_per_worker(self.config)
            mine = devices_for_worker(_worker_index(workerid), gpus, per)
            node.workerinput[_INPUT_DEVICES] = ",".join(mine)
        else:
            count = len(getattr(self.config.option, "tx", None) or []) or 1
            node.workerinput[_INPUT_THREADS] = max(1, cpu_cores() // count)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load" or config.getoption(OPT_DIST) != "family":
            return None  # an explicit --dist other than load, or --mechtests-dist xdist
        return FamilyScheduling(config, log, self.pattern)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        decision = config.stash.get(_DECISION, None)
        lines = [decision] if decision else []
        if config.getvalue("dist") == "load" and config.getoption(OPT_DIST) == "family":
            lines.append("mechtests: xdist distribution by family (one worker per family's "
                         "claim tests; --mechtests-dist xdist to turn off)")
        return lines


class FamilyScheduling(LoadScopeScheduling):
    """xdist scheduling with one work unit per model family.

    xdist's ``LoadScopeScheduling`` hands out whole scopes; here a claim test's scope is
    ``family:<name>``, read from the parameter id of its node id (the only thing the
    controller sees; the family names come from the options, so ``llama2-13b`` and
    ``llama2-7b`` are told apart). Every other test is its own scope, as with
    ``--dist load``. With more workers than families the extra workers stop once collection
    is done (xdist logs "Shutting down N nodes"). Units go out largest first
    (xdist's ``--loadscope-reorder``, on by default).
    """

    def __init__(self, config: pytest.Config, log: Any = None,
                 pattern: re.Pattern[str] | None = None) -> None:
        super().__init__(config, log)
        self.pattern = pattern or family_pattern([], [])

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid, self.pattern)


def scope_of(nodeid: str, pattern: re.Pattern[str]) -> str:
    """``family:<name>`` for a claim test, else the node id itself.

    Example:
        >>> p = family_pattern(["llama2-7b", "llama2-13b"], ["base", "instruct"])
        >>> scope_of("t.py::test_claim_holds[llama2-13b-base_instruct-x.y]", p)
        'family:llama2-13b'
        >>> scope_of("tests/unit/test_stats.py::test_bootstrap", p)
        'tests/unit/test_stats.py::test_bootstrap'
    """
    if nodeid.endswith("]") and "[" in nodeid:
        params = nodeid[nodeid.index("[") + 1:-1]
        match = pattern.search(params)
        if match:
            return f"family:{match.group('family')}"
    return nodeid


def register_xdist(config: pytest.Config, family_names: Callable[[], Iterable[str]]) -> None:
    """Worker: apply the controller's GPU / thread choice. Controller (xdist loaded):
    register :class:`XdistSupport` (node setup, family scheduler, header line);
    ``family_names`` is asked for the run's families when the scheduler is made."""
    if hasattr(config, "workerinput"):
        pin_worker(config)
    elif config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistSupport(config, family_names), "mechtests-xdist")
