"""Plots of the knowledge area: patching heatmaps (layer x token), side by side.

Takes plain arrays (never models) and writes a PNG with matplotlib's Agg backend, so it runs
headless and in xdist workers. Layout follows the paper's figures (``patching_visualize.py``):
layer on the y axis from the first layer at the top, token labels on the x axis, a diverging
colour scale centred on 0 with range [-1, 1] for normalised maps.

Example:
    >>> plot_heatmaps([("base", a), ("instruct", b), ("difference", a - b)],
    ...               ["The", "city", "[s1]"], Path("k.png"))               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mechtests.phases import timed_phase

__all__ = ["plot_heatmaps"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@timed_phase("plots")
def plot_heatmaps(
    panels: Sequence[tuple[str, np.ndarray]],
    columns: Sequence[str],
    path: Path,
    title: str = "",
    vrange: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """One panel per ``(label, [layer, column] array)``, sharing ``columns`` as x tick labels."""
    plt = _pyplot()
    n_layers, width = np.shape(panels[0][1])
    labels = list(columns) if len(columns) == width else [str(j) for j in range(width)]
    fig_w = min(24.0, 1.5 + len(panels) * max(2.6, 1.2 + 0.38 * width))
    fig_h = min(14.0, 1.8 + 0.28 * n_layers + 0.06 * max(len(s) for s in labels))
    fig, axes = plt.subplots(1, len(panels), figsize=(fig_w, fig_h), squeeze=False)
    image = None
    for ax, (label, arr) in zip(axes[0], panels):
        image = ax.imshow(np.asarray(arr, dtype=float), cmap="bwr", vmin=vrange[0],
                          vmax=vrange[1], aspect="auto", origin="upper", interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(range(width))
        ax.set_xticklabels(labels, rotation=90, fontsize=8)
        step = max(1, n_layers // 16)
        ax.set_yticks(range(0, n_layers, step))
    axes[0][0].set_ylabel("layer (resid_post)")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="normalised log P(T)/P(F)")
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
