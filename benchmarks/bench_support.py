"""Shared setup of the CPU benchmarks (imported by the test modules next to it)."""

from __future__ import annotations

from pathlib import Path

ROLES = ("base", "sft", "instruct", "control")


def built_organism_or_tiny(cache: Path) -> tuple[str, str]:
    """``(checkpoint reference, label)``: the CI organism's base when it is already built
    (shipped, or in the default cache; never trained here), else the tiny random llama."""
    from mechtests.checkpoints.cache_dir import default_cache_dir
    from mechtests.organism.checkpoints import SHIPPED, cache_root
    from mechtests.organism.config import size_config

    for root in (SHIPPED / "ci", cache_root(size_config("ci"), default_cache_dir())):
        if all((root / r / "config.json").is_file() for r in ROLES):
            return str(root / "base"), "organism ci/base"
    return "tiny:llama/base", "tiny llama/base (no organism built yet)"


def cities_queries(n: int) -> list[str]:
    """``n`` few-shot cities queries of the built-in data (repeated when there are fewer)."""
    from mechtests.data.sources import dataset_source
    from mechtests.data.statements import build_queries, load_few_shot, load_statements

    data = dataset_source("builtin:organism", None)
    statements = load_statements(data, "cities").statements
    queries, _ = build_queries(load_few_shot(data, "cities"), statements, " this statement is :")
    return (queries * (n // len(queries) + 1))[:n]
