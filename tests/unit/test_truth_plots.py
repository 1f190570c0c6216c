"""Truth plots write PNG files headless (mechtests.report.plots_truth)."""

from __future__ import annotations

from pathlib import Path

from mechtests.report.plots_truth import plot_cosine_by_layer, plot_transfer_matrix

PNG_MAGIC = b"\x89PNG"


def test_cosine_by_layer_plot_is_written(tmp_path: Path) -> None:
    path = plot_cosine_by_layer(
        {"base-instruct": {0: 0.2, 1: 0.9, 2: 0.95}, "base-control": {0: 0.01, 1: 0.05}},
        tmp_path / "sub" / "cos.png", probe_layer=1, null=0.1,
    )
    assert path.read_bytes()[:4] == PNG_MAGIC


def test_transfer_matrix_plot_is_written_with_missing_cells(tmp_path: Path) -> None:
    matrix = {("base", "base"): 0.9, ("base", "instruct"): 0.85, ("instruct", "instruct"): 0.92}
    path = plot_transfer_matrix(matrix, ["base", "instruct"], tmp_path / "m.png")
    assert path.read_bytes()[:4] == PNG_MAGIC
