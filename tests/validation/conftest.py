"""The ``validation`` marker: end-to-end runs of known-answer mutants (CI runs the cheapest)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "validation: runs known-answer mutants end to end through the claim suite "
        "(select with -m validation)",
    )
