from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechtests.store import ActivationStore, fingerprint_checkpoint


def compute_counter() -> tuple[list[int], object]:
    calls: list[int] = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"blocks.0.hook_resid_post": torch.arange(6.0).reshape(1, 2, 3)}

    return calls, compute


EXPECTED = {"blocks.0.hook_resid_post": (1, 2, 3)}
KEY = {"model": "abc", "prompts": "p", "sites": ["blocks.0.hook_resid_post"]}


def test_a_second_request_reuses_the_cache(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path)
    calls, compute = compute_counter()
    first = store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    second = store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    assert len(calls) == 1
    assert torch.equal(first["blocks.0.hook_resid_post"], second["blocks.0.hook_resid_post"])


def test_a_changed_key_is_recomputed(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path)
    calls, compute = compute_counter()
    store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    store.get_or_compute({**KEY, "model": "def"}, EXPECTED, compute)  # type: ignore[arg-type]
    assert len(calls) == 2


def test_a_corrupted_entry_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path)
    calls, compute = compute_counter()
    store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    path = store.path_for(KEY, "acts")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(UserWarning, match="does not load"):
        store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    assert len(calls) == 2


def test_an_entry_of_the_wrong_shape_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path)
    _, compute = compute_counter()
    store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="expected"), pytest.raises(Exception, match="shape"):
        store.get_or_compute(KEY, {"blocks.0.hook_resid_post": (2, 2, 3)}, compute)  # type: ignore[arg-type]


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    store = ActivationStore(tmp_path)
    _, compute = compute_counter()
    store.get_or_compute(KEY, EXPECTED, compute)  # type: ignore[arg-type]
    leftovers = [p for p in (tmp_path / "activations").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_fingerprint_follows_content_not_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"weights-1")
    assert fingerprint_checkpoint(a) == fingerprint_checkpoint(b)
    (b / "model.safetensors").write_bytes(b"weights-2")
    assert fingerprint_checkpoint(a) != fingerprint_checkpoint(b)


def test_a_labelled_entry_keeps_its_labels_and_one_without_them_is_recomputed(
    tmp_path: Path,
) -> None:
    import warnings

    from safetensors.torch import save_file

    store = ActivationStore(tmp_path)
    calls = []

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        calls.append(1)
        return {"x": torch.ones(2)}, {"engine": "suffix"}

    _, labels = store.get_or_compute_labelled(KEY, {"x": (2,)}, compute, "t", labels=["engine"])
    again = store.get_or_compute_labelled(KEY, {"x": (2,)}, compute, "t", labels=["engine"])
    assert labels == again[1] == {"engine": "suffix"}
    assert len(calls) == 1
    save_file({"x": torch.ones(2)}, str(store.path_for(KEY, "t")))  # an entry without labels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.get_or_compute_labelled(KEY, {"x": (2,)}, compute, "t", labels=["engine"])
    assert len(calls) == 2
    assert any("lacks labels ['engine']" in str(w.message) for w in caught)
