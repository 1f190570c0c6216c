"""Plots of the truth area: direction cosine by layer, and the probe-transfer matrix.

Both take plain numbers (never models or tensors) and write a PNG with matplotlib's Agg
backend, so they run headless and in xdist workers.

Example:
    >>> plot_cosine_by_layer({"base-instruct": {0: 0.5, 1: 0.9}}, Path("cos.png"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechtests.phases import timed_phase

__all__ = ["plot_cosine_by_layer", "plot_transfer_matrix"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@timed_phase("plots")
def plot_cosine_by_layer(
    curves: Mapping[str, Mapping[int, float]],
    path: Path,
    probe_layer: int | None = None,
    null: float | None = None,
    title: str = "truth direction: cosine by layer",
) -> Path:
    """One line per model pair (e.g. ``base-sft``, ``base-instruct``, ``base-control``).

    ``probe_layer`` draws a vertical marker; ``null`` a dashed line at the random-direction
    quantile of ``|cos|``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for label, curve in curves.items():
        layers = sorted(curve)
        ax.plot(layers, [curve[layer] for layer in layers], marker="o", label=label)
    if probe_layer is not None:
        ax.axvline(probe_layer, color="grey", linestyle=":", label=f"probe layer {probe_layer}")
    if null is not None:
        ax.axhline(null, color="black", linestyle="--", linewidth=1, label="random |cos| q95")
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("cos(d_ref, d_other)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@timed_phase("plots")
def plot_transfer_matrix(
    matrix: Mapping[tuple[str, str], float],
    roles: Sequence[str],
    path: Path,
    title: str = "probe transfer: accuracy on held-out statements",
) -> Path:
    """Heatmap: row = model the probe was trained on, column = model it is evaluated on."""
    plt = _pyplot()
    k = len(roles)
    values = [[matrix.get((src, dst), float("nan")) for dst in roles] for src in roles]
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.2, 1.0 * k + 1.6))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), list(roles))
    ax.set_yticks(range(k), list(roles))
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    for i in range(k):
        for j in range(k):
            value = values[i][j]
            ax.text(j, i, "-" if value != value else f"{value:.2f}", ha="center", va="center",
                    color="white" if value < 0.6 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
