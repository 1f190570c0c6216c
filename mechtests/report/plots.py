"""Draw the figures a measurement asks for: the plot hook the claim runner calls after a measure.

A measure never imports a plotter; it returns :class:`~mechtests.claims.model.Figure` s (which
plot, the file, the plain numbers it shows) and the runner hands each one to :func:`draw`, which
calls the plotter registered for its ``kind`` in :data:`PLOTTERS` (imported on first use, so the
claim layers stay free of matplotlib).

Example:
    >>> draw(Figure("truth.cosine_by_layer", "cos.png", {"curves": {"base-sft": {0: 0.9}}}))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mechtests.claims.model import Figure
from mechtests.errors import ConfigError

__all__ = ["PLOTTERS", "draw"]

# figure kind -> "module:function"; the function takes the figure's data and ``path``
PLOTTERS = {
    "knowledge.heatmaps": "mechtests.report.plots_knowledge:plot_heatmaps",
    "truth.cosine_by_layer": "mechtests.report.plots_truth:plot_cosine_by_layer",
    "truth.transfer_matrix": "mechtests.report.plots_truth:plot_transfer_matrix",
    "refusal.rates": "mechtests.report.plots_refusal:plot_refusal_bars",
}


def draw(figure: Figure) -> str:
    """Write ``figure`` with its plotter; its path."""
    if figure.kind not in PLOTTERS:
        raise ConfigError(f"figure kind {figure.kind!r} has no plotter; expected one of "
                          f"{', '.join(sorted(PLOTTERS))}. Fix: add it to PLOTTERS.")
    module, _, name = PLOTTERS[figure.kind].partition(":")
    plot = getattr(importlib.import_module(module), name)
    plot(**figure.data, path=Path(figure.path))
    return figure.path
