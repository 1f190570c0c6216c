"""Shared test setup: offline hub, one torch thread per process, pytester available."""

from __future__ import annotations

import os

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
