"""The fast patching engine: suffix re-runs on a view of an HF Llama-like decoder stack.

See :mod:`mechtests.methods.patching` for the method and the layout. A site ``(l, -p)`` changes
nothing below block ``l`` and, with causal attention, nothing before position ``-p``. So the
FALSE prompts run once with every layer's residual (last ``W`` positions) and key/value cache
kept; then for each (layer ``l``, suffix length ``p``) one forward of a whole batch of pairs
pushes only the last ``p`` tokens, with position ``-p`` replaced by the TRUE activation, through
blocks ``l+1 ..`` of a shallow copy of the decoder stack that shares the weights and attends to
the cached FALSE prefix (a ``DynamicCache`` holding the prefix of every layer it runs). The
last block runs only what the last token's output needs (keys and values of the ``p`` tokens,
query, attention and MLP of the last one: :func:`_last_block`), then the final norm and the
two readout rows of the unembedding give ``LD``. Work per site: ``p`` tokens through
``L - 2 - l`` blocks and one token through the last, instead of the whole prompt through ``L``
blocks. (Switching the views to PyTorch's fused attention was measured slower on CPU for these
shapes, so they run the backend's eager attention.)

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


def _stack_view(stack: Any, layers: torch.nn.ModuleList, start: int, stop: int) -> Any:
    """A shallow copy of the decoder stack running only ``layers[start:stop]`` and no final
    norm (weights shared, the original module untouched)."""
    view = copy.copy(stack)
    view.__dict__["_modules"] = dict(stack._modules)
    view.layers = torch.nn.ModuleList(list(layers[start:stop]))
    view.norm = torch.nn.Identity()
    return view


def _check_block(stack: Any, block: Any) -> None:
    attn = getattr(block, "self_attn", None)
    needed = [(stack, "rotary_emb"), (stack, "norm"), (block, "input_layernorm"),
              (block, "post_attention_layernorm"), (block, "mlp"), (attn, "q_proj"),
              (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (attn, "head_dim"),
              (attn, "scaling")]
    missing = [name for obj, name in needed if not hasattr(obj, name)]
    if missing:
        raise SuffixEngineUnavailable(f"the last decoder block lacks {', '.join(missing)}")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _last_block(stack: Any, block: Any, hidden: torch.Tensor, k_prefix: torch.Tensor,
                v_prefix: torch.Tensor, prefix: int) -> torch.Tensor:
    """The last decoder block's output at the last position only ``[rows, d]``.

    Only the final token's output is read, so of the other ``p - 1`` tokens this block needs
    just their keys and values: no query, attention output or MLP for them (a Llama block:
    pre-norm attention with rotary embeddings, then a pre-norm MLP, as in Llama, Mistral and
    Qwen2). ``hidden`` is the block's input at the last ``p`` positions, ``k_prefix`` and
    ``v_prefix`` its cached keys and values of the ``prefix`` positions before them.
    """
    attn = block.self_attn
    rows, p, _ = hidden.shape
    hd = attn.head_dim
    x = block.input_layernorm(hidden)
    q = attn.q_proj(x[:, -1:]).view(rows, 1, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(rows, p, -1, hd).transpose(1, 2)
    v = attn.v_proj(x).view(rows, p, -1, hd).transpose(1, 2)
    positions = torch.arange(prefix, prefix + p, device=hidden.device).expand(rows, p)
    cos, sin = stack.rotary_emb(x, positions)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = _rope(q, cos[:, :, -1:], sin[:, :, -1:])
    k = torch.cat([k_prefix, _rope(k, cos, sin)], dim=2)
    v = torch.cat([v_prefix, v], dim=2)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, scale=attn.scaling, enable_gqa=q.shape[1] != k.shape[1])
    h = hidden[:, -1] + attn.o_proj(out.transpose(1, 2).reshape(rows, -1))
    return h + block.mlp(block.post_attention_layernorm(h))


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
    _check_block(stack, layers[-1])
    # blocks l+1 .. L-2 for a site at layer l (the last block is _last_block); l < L - 2 only
    views = [_stack_view(stack, layers, i + 1, n_layers - 1) for i in range(n_layers - 2)]
    run = _SuffixRun(model, stack, views, head, _cache_kwarg(stack), readout, backend.device)
    batch, groups = _by_length(backend, false_prompts)
    ld = torch.full((len(false_prompts), n_layers, width), float("nan"), dtype=torch.float64)
    ld_false = torch.full((len(false_prompts),), float("nan"), dtype=torch.float64)
    for length, members in groups.items():
        for chunk in _chunks(members, max_rows):
            ids = batch.input_ids[chunk][:, -length:].to(backend.device)
            resid, kv, clean = run.false_pass(ids, layers, width)
            idx = torch.tensor(chunk)
            ld_false[idx] = clean
            chunk_widths = torch.tensor([wids[i] for i in chunk])
            for layer in range(n_layers):
                src = source[layer][idx]
                for j in range(width):
                    run.site(ld, layer, j, width, length, idx, chunk_widths, src, resid, kv,
                             clean)
    return ld, ld_false


class _SuffixRun:
    """One target model's suffix runs: the FALSE pass of a chunk, then one site at a time."""

    def __init__(self, model: Any, stack: Any, views: list[Any], head: Any, kwarg: str,
                 readout: Readout, device: torch.device) -> None:
        self.model, self.stack, self.views = model, stack, views
        self.final = stack.layers[-1]
        self.n_layers = len(stack.layers)
        # only the readout's two rows of the unembedding (the LD needs no other logit)
        pick = torch.tensor(list(readout), device=head.weight.device)
        self.readout_w = head.weight[pick]
        bias = getattr(head, "bias", None)
        self.readout_b = None if bias is None else bias[pick]
        self.kwarg, self.readout, self.device = kwarg, readout, device

    def false_pass(self, ids: torch.Tensor, layers: torch.nn.ModuleList, width: int
                   ) -> tuple[dict[int, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]],
                              torch.Tensor]:
        """The FALSE prompts once: every block's output at the last ``width`` positions, the
        key/value cache and the clean ``LD``."""
        resid: dict[int, torch.Tensor] = {}
        handles = [layers[i].register_forward_hook(_keep(resid, i, width))
                   for i in range(len(layers))]
        try:
            with torch.no_grad():
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        kv = _kv_of(getattr(out, "cache", None) or out.past_key_values, len(layers))
        return resid, kv, _ld(out.logits[:, -1].float(), self.readout)

    def site(self, ld: torch.Tensor, layer: int, j: int, width: int, length: int,
             idx: torch.Tensor, chunk_widths: torch.Tensor, src: torch.Tensor,
             resid: dict[int, torch.Tensor], kv: list[tuple[torch.Tensor, torch.Tensor]],
             clean: torch.Tensor) -> None:
        """Fill ``ld[:, layer, j]`` for the chunk's pairs whose window reaches column ``j``."""
        n_layers = self.n_layers
        p = width - j  # suffix length: the patched token and everything after it
        rows = (chunk_widths >= p).nonzero().flatten()
        if rows.numel() == 0:
            return
        target = idx[rows]
        if layer == n_layers - 1 and p > 1:  # cannot reach the last position
            ld[target, layer, j] = clean[rows]
            return
        value = src[rows, j].to(self.device, resid[layer].dtype)
        noop = (value == resid[layer][rows.to(self.device), j]).all(-1).cpu()
        ld[target[noop], layer, j] = clean[rows[noop]]  # writes what is there
        rows, target, value = rows[~noop], target[~noop], value[~noop.to(self.device)]
        if rows.numel() == 0:
            return
        whole = rows.numel() == idx.numel()  # every row: views instead of gathered copies
        sel = slice(None) if whole else rows.to(self.device)
        hidden = resid[layer][sel, j:].clone()
        hidden[:, 0] = value
        prefix = length - p
        last = n_layers - 1
        with torch.no_grad():
            if layer < last - 1:  # blocks layer+1 .. last-1 on every suffix token
                cache = _make_cache([
                    (k[sel, :, :prefix], v[sel, :, :prefix]) if (i == 0 or layer < i < last)
                    else (None, None)
                    for i, (k, v) in enumerate(kv)
                ])
                hidden = self.views[layer](inputs_embeds=hidden, use_cache=True,
                                           **{self.kwarg: cache}).last_hidden_state
            if layer < last:
                k, v = kv[last]
                out = _last_block(self.stack, self.final, hidden, k[sel, :, :prefix],
                                  v[sel, :, :prefix], prefix)
            else:
                out = hidden[:, -1]
            logits = torch.nn.functional.linear(self.stack.norm(out), self.readout_w,
                                                self.readout_b).float()
        ld[target, layer, j] = _ld(logits, (0, 1))


def _keep(store: dict[int, torch.Tensor], layer: int, width: int) -> Callable[..., None]:
    def hook(_m: Any, _args: Any, output: Any) -> None:
        act = output[0] if isinstance(output, tuple) else output
        store[layer] = act[:, -width:].detach()

    return hook
