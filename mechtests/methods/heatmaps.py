"""Knowledge-location heatmaps: aggregation, the paper's normalisation, and comparisons.

A patching heatmap ``A`` is ``[layer, column]``: the mean over statement pairs of the TRUE/FALSE
logit difference read after patching the TRUE run's residual into the FALSE run at that site
(paper code Knowledge+Truthfulness/patching.py:patching_one_model; columns in reading order,
rows from the first layer). Everything here is
plain numpy on such arrays; the patching itself is :mod:`mechtests.methods.patching`.

* :func:`normalize` is ``patching_visualize.py:normalize`` exactly: 21 equal-width edges over
  ``[min - 1e-5, max + 1e-5]``, the lower ten bins -> 0, bins 11..20 -> 0.1..1.0.
* :func:`recovered_fraction` is the amplitude-aware ``R = (A - LD_F) / (LD_T - LD_F)`` of
  docs/claims.md (claim 1) (ours), comparable across models; :func:`knowledge_recovery` is its
  maximum
  over the knowledge columns (``Rk`` of section 3).
* Comparisons of section 2.5 (:func:`pearson_r`, :func:`max_abs_diff`) plus ours:
  :func:`hot_cells` / :func:`jaccard` (K3), :func:`peak_layer` (K4), layer-reversed and
  layer-shuffled nulls (K5), and :func:`interior_mask`, the cells that are not fixed by the
  patching structure alone (see below).
* :func:`group_columns` is ``visualize_results_tulu``'s grouping of a pair's columns into
  knowledge (true and false token ids differ), others, and the last token.

Structural cells. In a self-patching heatmap some cells are the same for every model: columns
before the first position where the true and false prompts differ patch an identical activation
(exactly ``LD_F``), and the last layer's row is ``LD_T`` at the last column and ``LD_F`` elsewhere.
Two unrelated models therefore already correlate strongly (organism study: up to 0.99).
:func:`interior_mask` drops those cells; correlating only them is the sharper test.

Example:
    >>> a = np.array([[0.0, 1.0], [2.0, 10.0]])
    >>> normalize(a).tolist()
    [[0.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "group_columns",
    "hot_cells",
    "interior_mask",
    "jaccard",
    "knowledge_recovery",
    "max_abs_diff",
    "mean_heatmap",
    "normalize",
    "peak_layer",
    "pearson_r",
    "recovered_fraction",
    "reverse_layers",
    "shuffle_layers",
]

GROUP_LABELS = ("knowledge", "others", "last token")
"""Column labels of a grouped (tulu_extracted) heatmap, in the paper's order."""


def mean_heatmap(ld: np.ndarray) -> np.ndarray:
    """``[pair, layer, column]`` logit differences -> ``[layer, column]`` mean (float64).

    Cells a pair did not patch (NaN, outside its window) are left out of that cell's mean.
    """
    arr = np.asarray(ld, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"expected [pair, layer, column] with >= 1 pair, got shape {arr.shape}")
    counts = np.isfinite(arr).sum(0)
    sums = np.where(np.isfinite(arr), arr, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


_BIN_VALUES = np.concatenate((np.zeros(10), np.linspace(0.1, 1.0, 10)))  # normalize()'s bins


def normalize(a: np.ndarray) -> np.ndarray:
    """The paper's ``normalize()`` (paper code Knowledge+Truthfulness/patching_visualize.py):
    lower half of the range -> 0, upper half
    quantised to 0.1..1.0 in ten equal bins. NaN cells are ignored for the range and stay NaN."""
    arr = np.asarray(a, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.full(arr.shape, np.nan)
    edges = np.linspace(finite.min() - 1e-5, finite.max() + 1e-5, 21)
    out = np.full(arr.shape, np.nan)
    ok = np.isfinite(arr)
    out[ok] = _BIN_VALUES[np.digitize(arr[ok], edges) - 1]
    return out


def recovered_fraction(a: np.ndarray, ld_true: float, ld_false: float) -> np.ndarray:
    """``R = (A - LD_F) / (LD_T - LD_F)``: 0 = no effect, 1 = the clean TRUE run's logit
    difference (docs/claims.md (claim 1), ours). ``LD_T``, ``LD_F`` are the target model's own clean
    values. A gap of zero gives NaN (the model does not separate TRUE from FALSE)."""
    gap = float(ld_true) - float(ld_false)
    if not np.isfinite(gap) or gap == 0.0:
        return np.full(np.shape(a), np.nan)
    return (np.asarray(a, dtype=np.float64) - float(ld_false)) / gap


def pearson_r(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of the flattened cells (``scipy.stats.pearsonr`` in the paper),
    over ``mask`` when given. NaN when either side is constant or fewer than 2 cells remain."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"heatmaps differ in shape: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((x * y).sum() / denom, -1.0, 1.0))


def max_abs_diff(a: np.ndarray, b: np.ndarray, columns: Sequence[int] | None = None) -> float:
    """``max |a - b|`` over all cells, or over ``columns`` only (``maxdiff_knowledge``)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    if columns is not None:
        diff = diff[:, list(columns)]
    diff = diff[np.isfinite(diff)]
    return float(diff.max()) if diff.size else float("nan")


def hot_cells(n: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of the cells with normalised value ``>= threshold`` (K3)."""
    arr = np.asarray(n, dtype=np.float64)
    return np.isfinite(arr) & (arr >= threshold - 1e-9)


def jaccard(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``|x & y| / |x | y|`` of two boolean masks (restricted to ``mask``); 1.0 when both are
    empty (identical, empty hot sets)."""
    a = np.asarray(x, dtype=bool)
    b = np.asarray(y, dtype=bool)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        a, b = a & m, b & m
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def peak_layer(a: np.ndarray, column: int) -> int:
    """The layer where ``column`` of the (raw) heatmap is largest (K4; first on ties)."""
    col = np.asarray(a, dtype=np.float64)[:, column]
    if not np.isfinite(col).any():
        raise ValueError(f"column {column} has no finite value")
    return int(np.nanargmax(col))


def reverse_layers(a: np.ndarray) -> np.ndarray:
    """The heatmap with its layer rows in reverse order (the K5 null)."""
    return np.asarray(a)[::-1].copy()


def shuffle_layers(a: np.ndarray, seed: int) -> np.ndarray:
    """The heatmap with its layer rows in a seeded random order (a second null)."""
    rng = np.random.default_rng(seed)
    return np.asarray(a)[rng.permutation(np.shape(a)[0])].copy()


def interior_mask(
    shape: tuple[int, int], first_column: int, drop_last_layer: bool = True
) -> np.ndarray:
    """Cells not fixed by the patching structure: columns from ``first_column`` (the first
    position where the true and false prompts differ) on and, for self-patching, every layer
    but the last (see the module docstring)."""
    n_layers, width = shape
    mask = np.zeros(shape, dtype=bool)
    mask[:, max(0, min(first_column, width)) :] = True
    if drop_last_layer and n_layers > 1:
        mask[-1] = False
    return mask


def knowledge_recovery(r: np.ndarray, columns: Sequence[int]) -> float:
    """``Rk``: the largest recovered fraction over the knowledge ``columns`` (docs/claims.md
    (claim 2))."""
    arr = np.asarray(r, dtype=np.float64)[:, list(columns)]
    arr = arr[np.isfinite(arr)]
    return float(arr.max()) if arr.size else float("nan")


def group_columns(ld: np.ndarray, knowledge: Sequence[int]) -> np.ndarray:
    """One pair's ``[layer, column]`` logit differences -> ``[layer, 3]``: the mean over the
    ``knowledge`` columns (true and false token ids differ), over the other columns except the
    last, and the last column (``visualize_results_tulu``, paper code
    Knowledge+Truthfulness/patching_visualize.py).

    NaN columns (outside the pair's window) are dropped first; ``knowledge`` indexes the
    remaining columns.
    """
    arr = np.asarray(ld, dtype=np.float64)
    keep = np.isfinite(arr).all(0)
    arr = arr[:, keep]
    width = arr.shape[1]
    know = sorted(set(knowledge))
    if not know or know[0] < 0 or know[-1] >= width:
        raise ValueError(f"knowledge columns {know} must be non-empty and within 0..{width - 1}")
    others = [j for j in range(width) if j not in know and j != width - 1]
    k = arr[:, know].mean(1)
    o = arr[:, others].mean(1) if others else np.full(arr.shape[0], np.nan)
    return np.stack([k, o, arr[:, -1]], axis=1)
