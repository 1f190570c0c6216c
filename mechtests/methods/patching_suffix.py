"""The fast patching engine: suffix re-runs on a view of an HF Llama-like decoder stack.

See :mod:`mechtests.methods.patching` for the method and the layout. A site ``(l, -p)`` changes
nothing below block ``l`` and, with causal attention, nothing before position ``-p``. So the
FALSE prompts run once with every layer's residual (last ``W`` positions) and key/value cache
kept; then for each (layer ``l``, suffix length ``p``) one forward of a whole batch of pairs
pushes only the last ``p`` tokens, with position ``-p`` replaced by the TRUE activation, through
blocks ``l+1 ..`` of a shallow copy of the decoder stack that shares the weights and attends to
the cached FALSE prefix (a ``DynamicCache`` holding the prefix of every layer it runs). The
final norm and the unembedding then read the last token. Work per site: ``p`` tokens through
``L - 1 - l`` blocks, instead of the whole prompt through ``L`` blocks.

Supported: ``model_type`` llama, mistral, qwen2 with full attention in every layer (their
decoder stack takes ``inputs_embeds`` without rescaling and indexes the cache by each attention
module's own ``layer_idx``). Gemma-2 (embedding scale, soft-capping, sliding layers) and any
other backend raise :class:`~mechtests.methods.patching.SuffixEngineUnavailable`, and
:func:`~mechtests.methods.patching.patch_heatmaps` uses the protocol-only sweep instead. The
model is only read: hooks are removed in a ``finally`` and the view is a new object.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechtests.engine.backend import Backend
from mechtests.methods.patching import (
    Readout,
    SuffixEngineUnavailable,
    _by_length,
    _check_source,
    _chunks,
    _ld,
    _widths,
)

__all__ = ["FAST_TYPES", "patch_suffix"]

FAST_TYPES = ("llama", "mistral", "qwen2")


def _hf_parts(backend: Backend) -> tuple[Any, Any, torch.nn.ModuleList, Any]:
    """(causal LM, decoder stack, its layers, lm_head) or :class:`SuffixEngineUnavailable`."""
    model = getattr(backend, "model", None)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model is None or model_type not in FAST_TYPES:
        raise SuffixEngineUnavailable(
            f"the suffix engine needs an HF {'/'.join(FAST_TYPES)} model behind the hooks "
            f"backend; got {type(backend).__name__} ({model_type})"
        )
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types) or getattr(
        config, "use_sliding_window", False
    ):
        raise SuffixEngineUnavailable("the suffix engine needs full attention in every layer")
    stack = getattr(model, "model", None)
    layers = getattr(stack, "layers", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(layers, torch.nn.ModuleList) or head is None:
        raise SuffixEngineUnavailable("model has no model.layers / lm_head")
    return model, stack, layers, head


def _stack_view(stack: Any, layers: torch.nn.ModuleList, start: int) -> Any:
    """A shallow copy of the decoder stack running only ``layers[start:]`` (weights shared, the
    original module untouched)."""
    view = copy.copy(stack)
    view.__dict__["_modules"] = dict(stack._modules)
    view.layers = torch.nn.ModuleList(list(layers[start:]))
    return view


def _cache_kwarg(stack: Any) -> str:
    params = inspect.signature(stack.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _kv_of(cache: Any, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers") and cache.layers and hasattr(cache.layers[0], "keys"):
        return [(cache.layers[i].keys, cache.layers[i].values) for i in range(n_layers)]
    if hasattr(cache, "key_cache"):
        return [(cache.key_cache[i], cache.value_cache[i]) for i in range(n_layers)]
    return [(k, v) for k, v in cache]


def _make_cache(kv: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]]) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv)
    except TypeError:  # transformers 4.x
        return DynamicCache.from_legacy_cache(tuple(kv))  # type: ignore[attr-defined]


def patch_suffix(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast engine (module docstring): ``(ld [pair, layer, W], ld_false [pair])``.

    Raises :class:`SuffixEngineUnavailable` for backends it does not support.
    """
    model, stack, layers, head = _hf_parts(backend)
    n_layers = len(layers)
    width = _check_source(source, len(false_prompts), n_layers)
    wids = _widths(len(false_prompts), width, widths)
    kwarg = _cache_kwarg(stack)
    device = backend.device
    batch, groups = _by_length(backend, false_prompts)
    ld = torch.full((len(false_prompts), n_layers, width), float("nan"), dtype=torch.float64)
    ld_false = torch.full((len(false_prompts),), float("nan"), dtype=torch.float64)
    views = [_stack_view(stack, layers, layer + 1) for layer in range(n_layers)]
    for length, members in groups.items():
        for chunk in _chunks(members, max_rows):
            ids = batch.input_ids[chunk][:, -length:].to(device)
            resid: dict[int, torch.Tensor] = {}
            handles = [layers[i].register_forward_hook(_keep(resid, i, width))
                       for i in range(n_layers)]
            try:
                with torch.no_grad():
                    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            finally:
                for h in handles:
                    h.remove()
            kv = _kv_of(getattr(out, "cache", None) or out.past_key_values, n_layers)
            clean = _ld(out.logits[:, -1].float(), readout)
            idx = torch.tensor(chunk)
            ld_false[idx] = clean
            chunk_widths = torch.tensor([wids[i] for i in chunk])
            for layer in range(n_layers):
                src = source[layer][idx]
                for j in range(width):
                    p = width - j  # suffix length: the patched token and everything after it
                    rows = (chunk_widths >= p).nonzero().flatten()
                    if rows.numel() == 0:
                        continue
                    target = idx[rows]
                    if layer == n_layers - 1 and p > 1:  # cannot reach the last position
                        ld[target, layer, j] = clean[rows]
                        continue
                    value = src[rows, j].to(device, resid[layer].dtype)
                    noop = (value == resid[layer][rows.to(device), j]).all(-1).cpu()
                    ld[target[noop], layer, j] = clean[rows[noop]]  # writes what is there
                    rows, target, value = rows[~noop], target[~noop], value[~noop.to(device)]
                    if rows.numel() == 0:
                        continue
                    sel = rows.to(device)
                    hidden = resid[layer][sel, j:].clone()
                    hidden[:, 0] = value
                    prefix = length - p
                    cache = _make_cache([
                        (k[sel, :, :prefix], v[sel, :, :prefix]) if (i == 0 or i > layer)
                        else (None, None)
                        for i, (k, v) in enumerate(kv)
                    ])
                    with torch.no_grad():
                        hid = views[layer](inputs_embeds=hidden, use_cache=True, **{kwarg: cache})
                        logits = head(hid.last_hidden_state[:, -1]).float()
                    ld[target, layer, j] = _ld(logits, readout)
    return ld, ld_false


def _keep(store: dict[int, torch.Tensor], layer: int, width: int) -> Callable[..., None]:
    def hook(_m: Any, _args: Any, output: Any) -> None:
        act = output[0] if isinstance(output, tuple) else output
        store[layer] = act[:, -width:].detach()

    return hook
