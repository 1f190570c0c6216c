"""Recognising a decoder's block layout from its module tree, for architectures without an
entry in :data:`mechtests.engine.archs.ARCH_SPECS`.

The hooks backend needs five module paths (see :class:`~mechtests.engine.archs.ArchSpec`): the
decoder-layer list, the module whose output is each block's attention contribution, the one
whose output is its MLP contribution, the MLP's down projection, and the final norm and
unembedding. :func:`recognise` finds them in three steps:

1. **Structure.** The layer list is the ``ModuleList`` of ``config.num_hidden_layers`` blocks;
   within a block, the attention is the child whose class or name says attention, the MLP the
   child whose class or name says MLP / feed-forward, norms are children whose only parameters
   are a ``[hidden]`` gain (and bias); the down projection is the MLP's last ``Linear`` into
   ``hidden``.
2. **The residual identity, measured.** One forward of four tokens records block 0's input,
   output and every candidate's output; the attention and MLP contributions are the pair of
   candidates with ``resid_post = resid_pre + attn + mlp`` (the attention module itself for a
   Llama block, its post-norm for Gemma-2/3 or OLMo-2 sandwich blocks).
3. **Sequential, not parallel.** A second forward adds an offset to the attention contribution;
   the MLP's input must change (it reads ``resid_mid``). Parallel blocks (GPT-J, Cohere) have no
   ``resid_mid`` and are refused.

The final norm's gain convention (``w`` or Gemma's ``1 + w``) is read off one call of it. Any
step that fails is a one-line :class:`~mechtests.errors.CheckpointError` naming the step.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from mechtests.engine.archs import ARCH_SPECS, ArchSpec
from mechtests.errors import CheckpointError

_ATTENTION_WORDS = ("attention", "attn")
_MLP_WORDS = ("mlp", "feed_forward", "feedforward", "ffn")


class _Unrecognised(Exception):
    """One failed recognition step; its message says which."""


class _Stop(Exception):
    """Ends the probe forward after block 0."""


def spec_for_model(model: Any) -> ArchSpec:
    """The table's spec for ``model.config.model_type``, else the layout recognised from the
    module tree (:func:`recognise`; a one-line :class:`CheckpointError` when it cannot be)."""
    model_type = str(model.config.model_type)
    if model_type in ARCH_SPECS:
        return ARCH_SPECS[model_type]
    return recognise(model)


def recognise(model: Any) -> ArchSpec:
    """The :class:`ArchSpec` of ``model``'s decoder, found as the module docstring says."""
    model_type = str(getattr(model.config, "model_type", type(model).__name__))
    try:
        return _recognise(model)
    except _Unrecognised as exc:
        raise CheckpointError(
            f"cannot recognise the decoder-block layout of model_type {model_type!r}: {exc}; "
            "expected pre-norm sequential blocks (attention, then MLP, each added to the "
            "residual stream). Fix: add an ArchSpec entry for it in mechtests/engine/archs.py "
            "naming its layer list and attention/MLP output modules."
        ) from None


def _recognise(model: Any) -> ArchSpec:
    hidden = int(model.config.hidden_size)
    layers_path = _layer_list(model, int(model.config.num_hidden_layers))
    block = model.get_submodule(layers_path)[0]
    children = dict(block.named_children())
    norms = [name for name, child in children.items() if _is_norm(child, hidden)]
    others = {name: child for name, child in children.items() if name not in norms}
    attn = _named_child(others, _ATTENTION_WORDS, "attention module")
    mlp = _named_child(others, _MLP_WORDS, "MLP module")
    down = _down_projection(children[mlp], hidden)
    attn_out, mlp_out = _contributions(model, block, attn, mlp, norms)
    _check_sequential(model, block, attn_out, mlp)
    final_norm = _final_norm(model, layers_path, hidden)
    kind, offset = _norm_convention(model.get_submodule(final_norm))
    return ArchSpec(
        layers=layers_path,
        final_norm=final_norm,
        unembed=_path_of(model, model.get_output_embeddings(), "unembedding"),
        attn_contrib=attn_out,
        mlp_contrib=mlp_out,
        mlp_down=f"{mlp}.{down}",
        norm_kind=kind,
        norm_offset=offset,
    )


def _layer_list(model: Any, n_layers: int) -> str:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and name:
            return str(name)
    raise _Unrecognised(f"no ModuleList of num_hidden_layers={n_layers} decoder layers")


def _named_child(children: dict[str, torch.nn.Module], words: tuple[str, ...], what: str) -> str:
    found = [name for name, child in children.items()
             if any(w in name.lower() or w in type(child).__name__.lower() for w in words)]
    if len(found) != 1:
        raise _Unrecognised(f"{len(found)} candidates for the {what} in a layer ({found})")
    return found[0]


def _is_norm(module: torch.nn.Module, hidden: int) -> bool:
    params = dict(module.named_parameters())
    return bool(params) and set(params) <= {"weight", "bias"} and all(
        tuple(p.shape) == (hidden,) for p in params.values())


def _down_projection(mlp: torch.nn.Module, hidden: int) -> str:
    linears = [name for name, m in mlp.named_modules()
               if isinstance(m, torch.nn.Linear) and m.out_features == hidden]
    if not linears:
        raise _Unrecognised("no Linear into the hidden size (down projection) in the MLP")
    return linears[-1]


def _probe_batch(model: Any) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    ids = torch.arange(4, device=device).unsqueeze(0) % int(model.config.vocab_size) + 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[no-any-return]


def _run_block0(model: Any, block: torch.nn.Module,
                hooks: list[tuple[torch.nn.Module, Any]]) -> None:
    """One forward of the probe batch with ``hooks`` (module, forward hook), ended after block
    0 (the layer's own output hook is registered last)."""

    def stop(*_: Any) -> None:
        raise _Stop

    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    handles.append(block.register_forward_hook(stop))
    try:
        with torch.no_grad():
            model(**_probe_batch(model), use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()


def _contributions(model: Any, block: torch.nn.Module, attn: str, mlp: str,
                   norms: list[str]) -> tuple[str, str]:
    outs: dict[str, torch.Tensor] = {}
    ends: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_m: Any, _a: Any, output: Any) -> None:
            outs[name] = _first(output).detach().float()
        return hook

    def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ends["pre"] = (args[0] if args else kwargs["hidden_states"]).detach().float()

    def post(_m: Any, _a: Any, output: Any) -> None:
        ends["post"] = _first(output).detach().float()

    handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        _run_block0(model, block, [(block.get_submodule(n), keep(n)) for n in (attn, mlp, *norms)]
                    + [(block, post)])
    finally:
        handle.remove()
    delta = ends["post"] - ends["pre"]
    scale = float(delta.abs().max()) + 1e-12
    for a, m in itertools.product((attn, *norms), (mlp, *norms)):
        if a != m and float((outs[a] + outs[m] - delta).abs().max()) <= 1e-4 * scale:
            return a, m
    raise _Unrecognised("no pair of the block's modules adds up to its residual update")


def _check_sequential(model: Any, block: torch.nn.Module, attn_out: str, mlp: str) -> None:
    seen: list[torch.Tensor] = []

    def record(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append((args[0] if args else next(iter(kwargs.values()))).detach().float())

    def shift(_m: Any, _a: Any, output: Any) -> Any:
        first = _first(output) + 1.0
        return (first, *output[1:]) if isinstance(output, tuple) else first

    handle = block.get_submodule(mlp).register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run_block0(model, block, [])
        _run_block0(model, block, [(block.get_submodule(attn_out), shift)])
    finally:
        handle.remove()
    if len(seen) != 2 or torch.allclose(seen[0], seen[1]):
        raise _Unrecognised("the MLP does not read the attention's output (a parallel block)")


def _final_norm(model: Any, layers_path: str, hidden: int) -> str:
    parent = layers_path.rpartition(".")[0]
    root = model.get_submodule(parent) if parent else model
    names = [n for n, child in root.named_children() if _is_norm(child, hidden)]
    if len(names) != 1:
        raise _Unrecognised(f"{len(names)} candidates for the final norm beside the layers")
    return f"{parent}.{names[0]}" if parent else names[0]


def _path_of(model: Any, target: Any, what: str) -> str:
    for name, module in model.named_modules():
        if module is target:
            return str(name)
    raise _Unrecognised(f"the {what} is not a submodule of the model")


def _norm_convention(norm: torch.nn.Module) -> tuple[str, float]:
    """("rmsnorm" | "layernorm", 0.0 | 1.0): the gain is ``w`` or ``1 + w`` (Gemma)."""
    if isinstance(norm, torch.nn.LayerNorm):
        return "layernorm", 0.0
    weight = dict(norm.named_parameters())["weight"].detach().float()
    x = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0))
    param = next(norm.parameters())
    with torch.no_grad():
        y = norm(x.to(param)).float().cpu()
    unit = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    for offset in (0.0, 1.0):
        if torch.allclose(y, unit * (offset + weight.cpu()), rtol=1e-2, atol=1e-3):
            return "rmsnorm", offset
    raise _Unrecognised("the final norm is neither x/rms(x) * w nor x/rms(x) * (1 + w)")
