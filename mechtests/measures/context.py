"""The per-family context that area measure functions work in.

A :class:`FamilyContext` holds one family, the run options, the activation store and at most one
loaded model. Asking for another role's backend releases the current one first, so cross-model
work never holds two models: collect each model's activations through :meth:`activations`
(cached on disk), then compare tensors.

Expensive results shared by several claims (e.g. every model's truth directions) go through
:meth:`memo`, a per-process cache keyed by a string.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mechtests.families import Family, resolve_checkpoint
from mechtests.phases import timed_phase

if TYPE_CHECKING:
    import torch

    from mechtests.data.sources import DatasetSource
    from mechtests.engine.backend import Backend
    from mechtests.store import ActivationStore

T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    """Options of one run (from the command line or the API)."""

    cache_dir: Path
    report_dir: Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | bfloat16 | float16
    backend: str = "hf"  # hf | transformer-lens
    max_examples: int | None = None  # None: the family's max_examples; 0: every example
    datasets_dir: Path | None = None  # the paper's datasets (folder holding du2025/ ...)
    progress: bool = True
    seed: int = 0


class FamilyContext:
    """One family's models, data and caches for a run. Not thread-safe; one per process."""

    def __init__(self, family: Family, options: RunOptions) -> None:
        from mechtests.store import ActivationStore

        self.family = family
        self.options = options
        self.store: ActivationStore = ActivationStore(options.cache_dir)
        self._loaded: tuple[str, Backend] | None = None
        self._paths: dict[str, Path] = {}
        self._fingerprints: dict[str, str] = {}
        self._memo: dict[str, Any] = {}
        self._datasets: DatasetSource | None = None

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_dir(self, role: str) -> Path:
        """The local directory of ``role``'s checkpoint (built or resolved offline)."""
        if role not in self._paths:
            spec = self.family.models[role]
            self._paths[role] = resolve_checkpoint(spec.ref, self.options.cache_dir)
        return self._paths[role]

    def fingerprint(self, role: str) -> str:
        """Content hash of ``role``'s checkpoint (see ``store.fingerprint_checkpoint``)."""
        if role not in self._fingerprints:
            from mechtests.store import fingerprint_checkpoint

            self._fingerprints[role] = fingerprint_checkpoint(self.checkpoint_dir(role))
        return self._fingerprints[role]

    def backend(self, role: str) -> Backend:
        """``role``'s model, loading it (and releasing any other model) when needed.

        Read-only use only: hooks must go through the backend's ``hooks=`` arguments.
        """
        if self._loaded is not None and self._loaded[0] == role:
            return self._loaded[1]
        self.release()
        from mechtests.engine import load_backend

        backend = load_backend(
            self.checkpoint_dir(role),
            device=self.options.device,
            dtype=self.options.dtype,
            backend=self.options.backend,
            name=f"{self.family.name}/{role}",
        )
        self._loaded = (role, backend)
        return backend

    @timed_phase("load")  # unloading (and collecting) is part of every model switch
    def release(self) -> None:
        """Drop the loaded model, if any."""
        if self._loaded is not None:
            self._loaded[1].release()
            self._loaded = None

    # -- activations -------------------------------------------------------------------------
    def activations(
        self,
        role: str,
        prompts: Sequence[str],
        sites: Sequence[str],
        positions: Sequence[int] | None,
        tag: str,
        batch_size: int = 32,
    ) -> dict[str, torch.Tensor]:
        """Activations of ``role`` at ``sites`` x ``positions`` for ``prompts``, via the store.

        Returns float32 CPU tensors ``[n_prompts, n_positions, d_model]`` per site. ``positions``
        must be given (negative = from the end); the model is loaded only on a cache miss.
        """
        from mechtests.engine.collect import collect_activations
        from mechtests.store import hash_prompts

        if positions is None:
            raise ValueError("positions must be given for cached activations")
        key = {
            "model": self.fingerprint(role),
            "dtype": self.options.dtype,
            "backend": self.options.backend,
            "prompts": hash_prompts(prompts),
            "n": len(prompts),
            "sites": list(sites),
            "positions": list(positions),
        }
        expected = {s: (len(prompts), len(positions), self._width(role, s)) for s in sites}
        return self.store.get_or_compute(
            key,
            expected,
            lambda: collect_activations(
                self.backend(role),
                prompts,
                sites,
                positions,
                batch_size=batch_size,
                progress=self.options.progress,
                desc=f"{self.family.name}/{role} {tag}",
            ),
            tag=tag,
        )

    def _width(self, role: str, site: str) -> int:
        """d_model, or d_mlp for ``mlp.hook_post`` sites (from config.json, no model load)."""
        import json

        config = json.loads((self.checkpoint_dir(role) / "config.json").read_text())
        if site.endswith(".mlp.hook_post"):
            return int(config["intermediate_size"])
        return int(config.get("hidden_size") or config["d_model"])

    # -- data, memo, artifacts ---------------------------------------------------------------
    @property
    def datasets(self) -> DatasetSource:
        """The family's dataset source (built-in organism data or the paper's files)."""
        if self._datasets is None:
            from mechtests.data.sources import dataset_source

            self._datasets = dataset_source(self.family.datasets, self.options.datasets_dir)
        return self._datasets

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """Compute once per process; later calls with ``key`` return the same object."""
        if key not in self._memo:
            self._memo[key] = compute()
        result: T = self._memo[key]
        return result

    @property
    def max_examples(self) -> int | None:
        """Examples per dataset: the run's ``max_examples`` (0: all), else the family's
        default, else None (all)."""
        return self.family.examples(self.options.max_examples)

    def subsample(self, items: Sequence[T], salt: str = "") -> list[T]:
        """At most :attr:`max_examples` items, drawn with a fixed seed (order preserved)."""
        limit = self.max_examples
        if limit is None or len(items) <= limit:
            return list(items)
        rng = random.Random(f"{self.options.seed}:{salt}")
        keep = sorted(rng.sample(range(len(items)), limit))
        return [items[i] for i in keep]

    def artifact(self, name: str) -> Path:
        """A path under the report directory for a plot or JSON of this family."""
        path = self.options.report_dir / "artifacts" / self.family.name / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
