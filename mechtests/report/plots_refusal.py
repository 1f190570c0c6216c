"""Bar chart of refusal rates per condition for one model pair (paper code
Refusal/apply_refusal_dir.py).

One panel per model run (the post-trained model, then the reference/base model). Within a panel,
groups are the interventions on their prompt set (baseline on harmful and harmless prompts,
ablation on harmful, addition on harmless) and bars are the direction used: the model's own,
the transferred one (the other model's), a random unit direction and, where the family has one,
the control base's direction. Reads only numbers; knows nothing of models.

Example:
    >>> panels = {"instruct": {"ablation (harmful)": {"own": 0.1, "random": 0.9}}}
    >>> plot_refusal_bars(panels, Path("refusal.png"), "organism base/instruct")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mechtests.phases import timed_phase

__all__ = ["BAR_COLOURS", "plot_refusal_bars"]

BAR_COLOURS = {
    "none": "#7f7f7f",
    "own": "#1f77b4",
    "transferred": "#ff7f0e",
    "random": "#2ca02c",
    "control base": "#9467bd",
}


@timed_phase("plots")
def plot_refusal_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path, title: str
) -> Path:
    """Write a PNG of grouped refusal-rate bars: ``panels[model][group][bar] = rate``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 3.8),
                             squeeze=False)
    for ax, (model, groups) in zip(axes[0], panels.items()):
        bars = [b for b in BAR_COLOURS if any(b in g for g in groups.values())]
        bars += sorted({b for g in groups.values() for b in g} - set(bars))
        width = 0.8 / max(len(bars), 1)
        for k, bar in enumerate(bars):
            xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(groups))]
            ys = [groups[g].get(bar, float("nan")) for g in groups]
            container = ax.bar(xs, ys, width, label=bar, color=BAR_COLOURS.get(bar))
            ax.bar_label(container, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(list(groups), fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("refusal rate")
        ax.set_title(f"model run: {model}", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
