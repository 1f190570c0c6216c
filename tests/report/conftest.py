"""Fixtures of the report tests: synthetic records and Debian's headless chromium."""

from __future__ import annotations

from typing import Any

import pytest
from report_helpers import find_chromium, synthetic_records


@pytest.fixture
def records() -> list[dict[str, Any]]:
    """Synthetic claim records (every verdict kind, two families, one plot); no models."""
    return synthetic_records()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (``apt-get install -y chromium``); tests skip without it."""
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not installed (apt-get install -y chromium): the HTML report is "
                    "checked in a real headless browser")
    return path
