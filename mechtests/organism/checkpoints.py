"""The ``organism:<size>/<role>`` checkpoint scheme.

``resolve("ci/base", cache_dir)`` returns, in order:

1. the shipped checkpoint ``fixtures/organism/checkpoints/<size>/<role>`` when it exists (the
   repository ships the CI organism, trained once and gated, so a fresh clone starts in seconds);
2. ``<cache_dir>/organism/<size>-<key>/<role>``, building all four roles there first when
   missing. ``<key>`` hashes the size's recipe and the code version, so a changed recipe never
   reuses a stale organism. The build holds a file lock (other pytest-xdist workers wait) and is
   atomic (a temporary directory renamed into place).

Set ``MECHTESTS_ORGANISM_REBUILD=1`` to ignore the shipped checkpoints and use the cache.

Example:
    >>> resolve("ci/instruct", Path(".cache"))  # doctest: +SKIP
    PosixPath('.../fixtures/organism/checkpoints/ci/instruct')
"""

from __future__ import annotations

import os
from pathlib import Path

from mechtests.checkpoints.atomic import atomic_directory
from mechtests.errors import CheckpointError
from mechtests.organism.config import OrganismConfig, size_config

ROLES = ("base", "sft", "instruct", "control")
SHIPPED = Path(__file__).resolve().parents[1] / "fixtures" / "organism" / "checkpoints"
REBUILD_ENV = "MECHTESTS_ORGANISM_REBUILD"
# The first seed a build tries: the shipped CI organism's requested seed (its chain passed at
# seed 4, the 4th try, and its control at 1001), so that a rebuild
# (MECHTESTS_ORGANISM_REBUILD=1) retrains the same seeds (bitwise only on the same torch and
# thread count; fixtures/organism/README.md).
DEFAULT_SEED = 1


def _complete(root: Path) -> bool:
    return all((root / role / "config.json").is_file() for role in ROLES)


def cache_root(cfg: OrganismConfig, cache_dir: Path) -> Path:
    """Where the organism of ``cfg`` is built inside ``cache_dir``."""
    return Path(cache_dir) / "organism" / f"{cfg.size}-{cfg.key()}"


def resolve(rest: str, cache_dir: Path, *, shipped: Path = SHIPPED,
            cfg: OrganismConfig | None = None) -> Path:
    """The local directory of ``organism:<rest>`` (``<size>/<role>``), building it if needed."""
    size, sep, role = rest.partition("/")
    if not sep or role not in ROLES:
        raise CheckpointError(
            f"organism checkpoint reference 'organism:{rest}' is malformed; expected "
            f"'organism:<size>/<role>' with role in {', '.join(ROLES)}. Fix: e.g. "
            "'organism:ci/base'."
        )
    cfg = cfg or size_config(size)
    if not os.environ.get(REBUILD_ENV) and _complete(shipped / size):
        _check_shipped_key(shipped / size, cfg)
        return shipped / size / role
    root = cache_root(cfg, cache_dir)
    if not _complete(root):
        build_locked(cfg, root)
    return root / role


def _check_shipped_key(root: Path, cfg: OrganismConfig) -> None:
    """A shipped organism whose card names another recipe key is stale: refuse it."""
    import json

    card = root / "card.json"
    if not card.is_file():
        return
    key = json.loads(card.read_text(encoding="utf-8")).get("key")
    if key != cfg.key():
        raise CheckpointError(
            f"shipped organism {root} was built from recipe key {key}, but the code's "
            f"{cfg.size!r} recipe has key {cfg.key()}; expected them to match. Fix: rebuild it "
            f"(mechtests organism build --size {cfg.size} --seed {DEFAULT_SEED} --out {root}) "
            f"or set {REBUILD_ENV}=1 to build into the cache."
        )


def build_locked(cfg: OrganismConfig, root: Path, seed: int = DEFAULT_SEED) -> Path:
    """Build into ``root`` once, under a file lock, atomically."""
    from filelock import FileLock

    from mechtests.organism.build import build

    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if _complete(root):
            return root
        with atomic_directory(root) as tmp:  # replaces an incomplete older build
            build(cfg, seed, tmp, log=lambda msg: print(f"[mechtests organism] {msg}"))
    return root
