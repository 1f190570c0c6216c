"""Phase accounting for ``mechtests bench``: wall time, items, memory peaks and FLOPs per phase.

The claim areas run unchanged; the engine, method and plot functions that do the heavy work carry
phase markers (:mod:`mechtests.phases`), and for the duration of
:meth:`PhaseRecorder.instrument` the recorder is installed, so every marked call is timed into
its phase. Time is *exclusive*: a phase entered inside another (a model load inside
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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechtests.phases import PATCHING, PATCHING_PHASES, PhaseCall, PhaseMarker, recording

__all__ = ["MARKED_MODULES", "PHASES", "UNITS", "PhaseRecorder", "PhaseStats"]

PHASES = ("load", "activation collection", "patching sweep", "cross-model patching",
          "direction selection", "probes", "steering", "generation", "entropy neurons",
          "bootstrap", "plots", "other")
UNITS = {"load": "models", "activation collection": "prompts", "patching sweep": "sites",
         "cross-model patching": "sites", "direction selection": "candidates", "probes": "fits",
         "steering": "prompt runs", "generation": "sequences", "entropy neurons": "neurons",
         "bootstrap": "resamples", "plots": "", "other": ""}
# the modules whose functions carry phase markers (imported before a run, so all are known)
MARKED_MODULES = (
    "mechtests.engine", "mechtests.engine.collect", "mechtests.engine.hf_common",
    "mechtests.measures.context", "mechtests.methods.patching", "mechtests.methods.refusal",
    "mechtests.methods.probes", "mechtests.methods.steering", "mechtests.methods.entropy_neurons",
    "mechtests.methods.confidence", "mechtests.methods.stats", "mechtests.report.plots_knowledge",
    "mechtests.report.plots_refusal", "mechtests.report.plots_truth",
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

    def _patching_phase(self, call: PhaseCall) -> str:
        backend, sources = call.arg("backend"), call.arg("sources")
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

    # -- the installed recorder (mechtests.phases) ------------------------------------------
    @contextmanager
    def instrument(self) -> Iterator[None]:
        """Install this recorder for the block's duration: every marked call is timed. Marked
        modules that do not import, and phases that no imported function marks, are listed in
        :attr:`missing`."""
        from mechtests.measures import AREA_MODULES
        from mechtests.phases import MARKERS

        for name in (*AREA_MODULES, *MARKED_MODULES):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                self.missing.append(name)
        marked = {m.phase for m in MARKERS}
        if PATCHING in marked:
            marked |= PATCHING_PHASES
        self.missing.extend(f"phase {p!r} (no marked function)" for p in PHASES
                            if p != "other" and p not in marked)
        with recording(self):
            yield

    def _skips(self, marker: PhaseMarker) -> bool:
        """Whether a call of ``marker`` is part of the running phase (not counted again)."""
        return bool(marker.inside & set(self._stack)) or self.current == marker.phase

    def run_marked(self, marker: PhaseMarker, call: PhaseCall) -> Any:
        """Time one marked call into its phase and add its items (:mod:`mechtests.phases`)."""
        if self._skips(marker):
            return call.fn(*call.args, **call.kwargs)
        name = self._patching_phase(call) if marker.phase == PATCHING else marker.phase
        with self.phase(name) as stats:
            result = call.fn(*call.args, **call.kwargs)
            if name == "load":
                self.watch_model(result)
        if marker.items is not None:
            stats.items += int(marker.items(call, result))
        return result

    @contextmanager
    def block(self, name: str, items: int) -> Iterator[PhaseStats]:
        """Time a marked ``with`` block (:func:`mechtests.phases.phase`) as ``name``; a block
        inside the same phase is part of it."""
        if self.current == name:
            yield self.stats[name]
            return
        with self.phase(name) as stats:
            yield stats
        stats.items += items
