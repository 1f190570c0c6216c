"""Shared test setup: offline hub, one torch thread per process, pytester available, and the
``paper_data`` marker (tests that read the paper's datasets skip, with the path, when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """2-core machines: one thread per process (xdist workers would oversubscribe)."""
    import torch

    torch.set_num_threads(1)


PAPER_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.paper_data(*paths)``: skip unless every path (under the paper's data
    folder, ``../shared/datasets`` beside the checkout; the folder itself when none) exists."""
    for mark in item.iter_markers("paper_data"):
        for part in mark.args or ("",):
            if not (PAPER_DATA / part).exists():
                pytest.skip(f"the paper's data is absent ({PAPER_DATA / part}); it is read from "
                            "../shared/datasets beside the checkout")
