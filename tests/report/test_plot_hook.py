"""The plot hook: a measurement's figures are drawn after the measure by the report's plotters."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from mechtests.claims.model import Figure
from mechtests.errors import ConfigError
from mechtests.report.plots import PLOTTERS, draw


def test_every_figure_kind_names_an_importable_plotter() -> None:
    for kind, where in PLOTTERS.items():
        module, _, name = where.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), kind


def test_a_figure_is_drawn_to_its_path(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cos.png"
    figure = Figure("truth.cosine_by_layer", str(path),
                    {"curves": {"base-sft": {0: 0.5, 1: 0.9}}, "probe_layer": 1, "null": 0.1})
    assert draw(figure) == str(path)
    assert path.stat().st_size > 1000


def test_a_figure_of_an_unknown_kind_is_a_config_error_with_the_known_kinds(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"figure kind 'truth\.nothing' has no plotter.*Fix:"):
        draw(Figure("truth.nothing", str(tmp_path / "x.png"), {}))
