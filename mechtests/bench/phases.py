"""Phase accounting for ``mechtests bench``: wall time, items, memory peaks and FLOPs per phase.

The claim areas run unchanged; for the duration of :meth:`PhaseRecorder.instrument` the engine
and method functions that do the heavy work (:data:`TARGETS`) are wrapped, so every call is
timed into its phase. Time is *exclusive*: a phase entered inside another (a model load inside
an activation collection) pauses the outer one, and time outside every phase is ``other``
(statistics, bootstraps, plots, hashing). On CUDA the device is synchronised at each phase
boundary so that asynchronous kernels are charged to the phase that launched them.

Each phase also gets its process CPU time (``time.process_time``, all threads): on a shared
machine, where other processes take cores, that is the work done; wall time is the user's wait.

Memory: the peak of ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident set
size (``VmHWM``, reset per phase through ``/proc/self/clear_refs`` on Linux; elsewhere the
process's high-water mark so far, which cannot be reset). A phase's peak includes the phases
nested in it.

FLOPs are counted analytically from what actually runs: forward pre-hooks on every decoder layer
add ``2 x (linear weights of the layer) x tokens + 4 x tokens x keys x heads x head_dim`` (QK^T
and AV; keys = the attention mask's key length, so padding and cached prefixes count), and a
hook on the unembedding adds ``2 x vocab x d_model`` per row it projects. Whatever engine a
phase uses (suffix patching, sweeps, KV-cached generation, early-stopped caching), the count
follows the tokens it pushes through each layer.

"load" is every model switch: loading (items: models loaded) and releasing the previous model
(``FamilyContext.release``: dropping it, with a full ``gc.collect`` for models on an
accelerator or of 64 MiB and more).

Patching calls are split by their source: TRUE activations that the same role's model produced
(collected through the context) make a "patching sweep"; any other source (another model's
activations, the norm-matched random null) makes "cross-model patching". A call with several
sources (``patch_heatmaps_many``) is a sweep only if all of them are the target's own.
"""

from __future__ import annotations

import importlib
import re
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["PHASES", "TARGETS", "UNITS", "PhaseRecorder", "PhaseStats", "Target"]

PHASES = ("load", "activation collection", "patching sweep", "cross-model patching",
          "direction selection", "probes", "steering", "generation", "entropy neurons",
          "bootstrap", "plots", "other")
UNITS = {"load": "models", "activation collection": "prompts", "patching sweep": "sites",
         "cross-model patching": "sites", "direction selection": "candidates", "probes": "fits",
         "steering": "prompt runs", "generation": "sequences", "entropy neurons": "neurons",
         "bootstrap": "resamples", "plots": "", "other": ""}
PATCHING = frozenset({"patching sweep", "cross-model patching"})
ItemsFn = Callable[[tuple[Any, ...], dict[str, Any], Any], int]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _n(i: int, name: str) -> ItemsFn:
    return lambda a, k, _r: len(_arg(a, k, i, name) or ())


def _sites(_a: tuple[Any, ...], _k: dict[str, Any], results: Any) -> int:
    return sum(int((~torch.isnan(result.ld)).sum()) for result in results)


def _steer_runs(a: tuple[Any, ...], k: dict[str, Any], _r: Any) -> int:
    prompts = len(_arg(a, k, 1, "true_queries")) + len(_arg(a, k, 2, "false_queries"))
    return prompts * (1 + len(_arg(a, k, 3, "vectors")))


def _neurons(a: tuple[Any, ...], k: dict[str, Any], _r: Any) -> int:
    return int(_arg(a, k, 0, "weights").mlp_out.shape[1])


@dataclass(frozen=True)
class Target:
    """A function (``module:attr``) or method (``module:Class.method``) timed as ``phase``
    (``"patching"``: sweep or cross-model by its source); ``inside``: phases under which a call
    is part of the caller (not counted again)."""

    where: str
    phase: str
    items: ItemsFn | None = None
    inside: frozenset[str] = frozenset()


TARGETS = (
    Target("mechtests.engine:load_backend", "load", lambda *_: 1),
    Target("mechtests.measures.context:FamilyContext.release", "load"),  # unload + gc: model switches
    Target("mechtests.engine.collect:collect_activations", "activation collection",
           _n(1, "prompts")),
    Target("mechtests.methods.patching:patch_heatmaps_many", "patching", _sites, PATCHING),
    Target("mechtests.methods.patching:clean_logit_diffs", "patching sweep", None, PATCHING),
    Target("mechtests.methods.refusal:select_direction", "direction selection",
           _n(3, "candidates")),
    Target("mechtests.methods.probes:ProjectionLRProbe.fit", "probes", lambda *_: 1),
    Target("mechtests.methods.probes:MassMeanProbe.fit", "probes", lambda *_: 1),
    Target("mechtests.methods.probes:LogisticProbe.fit", "probes", lambda *_: 1),
    Target("mechtests.methods.probes:correct", "probes"),
    Target("mechtests.methods.probes:accuracy", "probes"),
    Target("mechtests.methods.steering:run_steering", "steering", _steer_runs),
    Target("mechtests.engine.hf_common:HFBackendBase.generate", "generation", _n(1, "prompts")),
    Target("mechtests.engine.hf_common:HFBackendBase.readout_weights", "entropy neurons"),
    Target("mechtests.methods.entropy_neurons:neuron_stats", "entropy neurons", _neurons),
    Target("mechtests.methods.entropy_neurons:select_entropy_neurons", "entropy neurons"),
    Target("mechtests.methods.confidence:neuron_means", "entropy neurons"),
    Target("mechtests.methods.confidence:ablation_entropies", "entropy neurons"),
    Target("mechtests.methods.confidence:ablation_entropies_many", "entropy neurons"),
    Target("mechtests.methods.stats:bootstrap_interval", "bootstrap",
           lambda a, k, _r: int(_arg(a, k, 1, "n_boot") or 1000)),
    Target("mechtests.report.plots_knowledge:plot_heatmaps", "plots"),
    Target("mechtests.report.plots_refusal:plot_refusal_bars", "plots"),
    Target("mechtests.report.plots_truth:plot_cosine_by_layer", "plots"),
    Target("mechtests.report.plots_truth:plot_transfer_matrix", "plots"),
)


@dataclass
class PhaseStats:
    """One phase's totals (exclusive seconds; peak bytes include nested phases)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time (all threads): the work on a shared machine
    calls: int = 0
    items: int = 0
    flops: float = 0.0
    layer_tokens: int = 0  # tokens through decoder layer 0 (b x q summed over calls)
    head_rows: int = 0  # rows projected onto the vocabulary
    peak_bytes: int = 0


class Memory:
    """Peak memory with a reset: CUDA allocator peak, else Linux VmHWM, else ru_maxrss."""

    _STATUS = Path("/proc/self/status")
    _CLEAR = Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.resettable = self.cuda or self._try_clear()
        self.kind = ("torch.cuda.max_memory_allocated" if self.cuda else
                     "peak RSS (VmHWM, reset per phase)" if self.resettable else
                     "process peak RSS so far (ru_maxrss; no reset on this OS)")

    def _try_clear(self) -> bool:
        try:
            self._CLEAR.write_text("5")
            return "VmHWM" in self._STATUS.read_text()
        except OSError:
            return False

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            self._CLEAR.write_text("5")

    def peak(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        if self.resettable:
            match = re.search(r"VmHWM:\s+(\d+) kB", self._STATUS.read_text())
            return int(match.group(1)) * 1024 if match else 0
        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


@dataclass
class PhaseRecorder:
    """Exclusive per-phase accounting (module docstring). Not thread-safe."""

    device: torch.device
    stats: dict[str, PhaseStats] = field(default_factory=lambda: {p: PhaseStats() for p in PHASES})
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.memory = Memory(self.device)
        self._stack: list[str] = ["other"]
        self._since = time.perf_counter()
        self._cpu_since = time.process_time()
        self._sources: dict[int, str] = {}

    # -- phases ------------------------------------------------------------------------------
    @property
    def current(self) -> str:
        return self._stack[-1]

    def _switch(self) -> float:
        """Charge the running segment to the current phase; the time now."""
        self.memory.sync()
        now, cpu = time.perf_counter(), time.process_time()
        self.stats[self.current].seconds += now - self._since
        self.stats[self.current].cpu_seconds += cpu - self._cpu_since
        self._since, self._cpu_since = now, cpu
        return now

    def _note_peak(self, frames: Iterable[str]) -> None:
        peak = self.memory.peak()
        for frame in frames:
            self.stats[frame].peak_bytes = max(self.stats[frame].peak_bytes, peak)

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseStats]:
        """Time the block as ``name`` (exclusive of phases entered inside it)."""
        self._switch()
        self._note_peak([self.current])
        self.memory.reset()
        self._stack.append(name)
        stats = self.stats[name]
        stats.calls += 1
        try:
            yield stats
        finally:
            self._switch()
            self._note_peak(self._stack)  # the peak of this phase is also its callers'
            self.memory.reset()
            self._stack.pop()

    def start(self) -> None:
        """Restart the clock (call right before the timed run)."""
        self.memory.sync()
        self.memory.reset()
        self._since = time.perf_counter()
        self._cpu_since = time.process_time()

    def finish(self) -> None:
        self._switch()
        self._note_peak(self._stack)

    # -- sources of patching -----------------------------------------------------------------
    def register_source(self, role: str, tensors: Iterable[torch.Tensor]) -> None:
        """Mark ``tensors`` (activations from the store) as produced by ``role``'s model."""
        for t in tensors:
            self._sources[id(t)] = role

    def _patching_phase(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        backend, sources = _arg(args, kwargs, 0, "backend"), _arg(args, kwargs, 2, "sources")
        role = str(getattr(backend, "name", "")).rsplit("/", 1)[-1]
        firsts = [source[0] if source else None for source in sources or ()]
        own = bool(firsts) and all(f is not None and self._sources.get(id(f)) == role
                                   for f in firsts)
        return "patching sweep" if own else "cross-model patching"

    # -- FLOPs ---------------------------------------------------------------------------------
    def add_flops(self, flops: float, layer_tokens: int = 0, head_rows: int = 0) -> None:
        stats = self.stats[self.current]
        stats.flops += flops
        stats.layer_tokens += layer_tokens
        stats.head_rows += head_rows

    def watch_model(self, backend: Any) -> None:
        """Install FLOP-counting hooks on ``backend``'s HF model and record its weight size."""
        from mechtests.bench.flops import install_flop_hooks, weight_bytes

        model = getattr(backend, "model", None)
        if model is None:
            return
        role = str(getattr(backend, "name", "")).rsplit("/", 1)[-1]
        nbytes, params = weight_bytes(model)
        loads = self.models.get(role, {}).get("loads", 0) + 1
        self.models[role] = {"weights_bytes": nbytes, "params": params, "loads": loads}
        install_flop_hooks(model, backend.spec, self.add_flops)

    # -- instrumentation -----------------------------------------------------------------------
    @contextmanager
    def instrument(self, targets: Iterable[Target] = TARGETS) -> Iterator[None]:
        """Wrap every target (and every module-level alias of it) for the block's duration."""
        from mechtests.measures import AREA_MODULES

        for name in AREA_MODULES:  # bind their imports now, so the aliases are found
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                self.missing.append(name)
        undo: list[tuple[Any, str, Any]] = []
        try:
            for target in targets:
                undo.extend(self._patch(target))
            yield
        finally:
            for owner, attr, original in reversed(undo):
                setattr(owner, attr, original)

    def _patch(self, target: Target) -> list[tuple[Any, str, Any]]:
        module_name, _, path = target.where.partition(":")
        try:
            module = importlib.import_module(module_name)
            owner: Any = module
            *outer, attr = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            original = getattr(owner, attr)
        except (ImportError, AttributeError):
            self.missing.append(target.where)
            return []
        wrapper = self._wrap(target, original)
        undo = [(owner, attr, original)]
        setattr(owner, attr, wrapper)
        if owner is module:  # `from module import fn` aliases in other mechtests modules
            for other in list(sys.modules.values()):
                name = getattr(other, "__name__", "")
                if other is not module and name.startswith("mechtests") and \
                        getattr(other, attr, None) is original:
                    undo.append((other, attr, original))
                    setattr(other, attr, wrapper)
        return undo

    def _wrap(self, target: Target, fn: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if target.inside & set(recorder._stack) or recorder.current == target.phase:
                return fn(*args, **kwargs)
            phase = (recorder._patching_phase(args, kwargs) if target.phase == "patching"
                     else target.phase)
            with recorder.phase(phase) as stats:
                result = fn(*args, **kwargs)
                if phase == "load":
                    recorder.watch_model(result)
            if target.items is not None:
                stats.items += int(target.items(args, kwargs, result))
            return result

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(fn, "__name__", "wrapped")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper
