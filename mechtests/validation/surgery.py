"""Weight surgery on HuggingFace checkpoints: the operations known-answer mutants are made of.

Every function here works on a plain ``{name: tensor}`` state dict in the HF naming of the
decoder-only architectures the suite loads (Llama, Mistral, Qwen2; ``model.embed_tokens``,
``model.layers.<i>.self_attn.o_proj``, ``model.layers.<i>.mlp.down_proj``). Nothing here knows
about claims or families.

The residual stream of a pre-norm transformer is the sum of what three kinds of weights write
into it: the token embedding, every attention output projection (``o_proj``) and every MLP
output projection (``down_proj``). Projecting a unit direction ``d`` out of all of them,
``W <- (I - d d^T) W`` for the projections and ``E <- E (I - d d^T)`` for the embedding rows,
leaves a model whose residual stream has no component along ``d`` at any layer: the weight
orthogonalisation of Arditi et al. 2024 ("Refusal in language models is mediated by a single
direction", section 4.1).

Example:
    >>> state = {"model.layers.0.mlp.down_proj.weight": torch.ones(2, 3)}
    >>> out = project_out_writers(state, torch.tensor([1.0, 0.0]), n_layers=1)
    >>> out["model.layers.0.mlp.down_proj.weight"][0].abs().max().item()
    0.0
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from mechtests.errors import CheckpointError

EMBED = "model.embed_tokens.weight"
_WRITER_RE = re.compile(
    r"^model\.layers\.(\d+)\.(self_attn\.o_proj|mlp\.down_proj)\.(weight|bias)$")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def down_proj_name(layer: int) -> str:
    """The state-dict key of ``layer``'s MLP output projection (``[d_model, d_mlp]``)."""
    return f"model.layers.{layer}.mlp.down_proj.weight"


def writer_names(state: Mapping[str, torch.Tensor], layers: Iterable[int] | None = None,
                 embedding: bool = True) -> list[str]:
    """The keys of the weights that write to the residual stream (of ``layers``; all if None)."""
    wanted = None if layers is None else set(layers)
    names = [EMBED] if embedding and EMBED in state else []
    for name in state:
        match = _WRITER_RE.match(name)
        if match and (wanted is None or int(match.group(1)) in wanted):
            names.append(name)
    return names


def _unit(direction: torch.Tensor) -> torch.Tensor:
    d = direction.reshape(-1).to(torch.float64)
    norm = float(d.norm())
    if not norm > 0.0:
        raise ValueError("cannot project out a zero (or NaN) direction")
    return d / norm


def project_out_writers(state: Mapping[str, torch.Tensor], direction: torch.Tensor, n_layers: int,
                        first_layer: int = 0, embedding: bool = True) -> dict[str, torch.Tensor]:
    """A copy of ``state`` in which no residual writer of blocks ``first_layer..n_layers-1``
    (and the embedding, when ``embedding``) has a component along ``direction``.

    Computed in float64 and cast back to each tensor's dtype. Raises ``ValueError`` when no
    writer has the direction's width (a direction from another model).
    """
    d = _unit(direction)
    out = dict(state)
    names = writer_names(state, range(first_layer, n_layers), embedding)
    changed = 0
    for name in names:
        weight = state[name]
        w = weight.to(torch.float64)
        if name == EMBED:  # rows are vectors in the residual basis
            if w.shape[-1] != d.shape[0]:
                continue
            w = w - torch.outer(w @ d, d)
        elif weight.ndim == 1:  # a bias adds a residual vector
            if w.shape[0] != d.shape[0]:
                continue
            w = w - (w @ d) * d
        else:  # [d_model, d_in]: the columns are written into the residual stream
            if w.shape[0] != d.shape[0]:
                continue
            w = w - torch.outer(d, d @ w)
        out[name] = w.to(weight.dtype)
        changed += 1
    if changed == 0:
        raise ValueError(f"no residual writer has width {d.shape[0]} (another model's direction?)")
    return out


def scale_neurons(state: Mapping[str, torch.Tensor], layer: int, neurons: Iterable[int],
                  factor: float) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the output weights (``down_proj`` columns) of ``neurons`` of
    ``layer`` multiplied by ``factor`` (0: those neurons no longer write anything)."""
    name = down_proj_name(layer)
    if name not in state:
        raise ValueError(f"state dict has no {name}")
    weight = state[name].clone()
    weight[:, list(neurons)] *= factor
    out = dict(state)
    out[name] = weight
    return out


def zero_neurons(state: Mapping[str, torch.Tensor], layer: int,
                 neurons: Iterable[int]) -> dict[str, torch.Tensor]:
    """:func:`scale_neurons` with factor 0."""
    return scale_neurons(state, layer, neurons, 0.0)


# -- checkpoint files --------------------------------------------------------------------------
def weight_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's ``*.safetensors`` files (sorted); a one-line error when there are none."""
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"checkpoint {checkpoint} has no *.safetensors file; expected safetensors weights for "
            "weight surgery. Fix: re-save it with save_pretrained(safe_serialization=True)."
        )
    return files


def load_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors files, on the CPU."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(checkpoint):
        state.update(load_file(str(path), device="cpu"))
    return state


def save_like(source: Path, target: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write ``state`` into ``target`` with ``source``'s file layout: each safetensors file
    keeps the tensors it had; every other file (config, tokenizer, shard index) is copied."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix != ".safetensors" and not path.name.startswith("."):
            shutil.copy2(path, target / path.name)
    for path in weight_files(source):
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            metadata = handle.metadata() or {"format": "pt"}
        save_file({n: state[n].contiguous() for n in names}, str(target / path.name),
                  metadata=metadata)


def check_supported(config: Mapping[str, object], checkpoint: Path) -> None:
    """Refuse architectures whose residual writers are not plain linear maps (Gemma-2's
    post-attention norms rescale what o_proj writes, so a projection would not survive)."""
    model_type = str(config.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"weight surgery on {checkpoint} (model_type {model_type!r}) is not supported; "
            f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}. Fix: validate a family of "
            "one of those architectures."
        )
