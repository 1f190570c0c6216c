"""The decoder blocks of the suffix patching engine, per architecture.

:mod:`mechtests.engine.suffix.runs` runs the last ``p`` tokens of many patched sites
through lean copies of an HF decoder block, attending to the FALSE run's cached prefix. This
module is that block, written once for the supported families; their differences are a small
declarative table (:data:`ARCHS`) read from ``config.model_type``:

* Llama, Mistral, Qwen2 - pre-norm blocks ``h + attn(norm(h))``, ``h + mlp(norm(h))``, rotary
  embeddings (Qwen2's q/k/v biases live in its linear layers); Mistral's ``sliding_window``
  applies to every layer, Qwen2's to the layers its ``layer_types`` mark sliding; Qwen3 adds
  per-head RMSNorm of queries and keys before the rotary embedding.
* Gemma-2 - "sandwich" norms: ``h + post_attn_norm(attn(input_norm(h)))`` and
  ``h + post_ff_norm(mlp(pre_ff_norm(h)))``; attention scores scaled by
  ``query_pre_attn_scalar ** -0.5`` and soft-capped (``cap * tanh(s / cap)``) before the mask;
  sliding-window layers (a query at position ``i`` sees keys ``j`` with ``i - window < j <= i``)
  alternating with full ones; the final logits soft-capped too.
* Gemma-3 (``gemma3_text``) - Gemma-2's block plus per-head RMSNorm of queries and keys before
  the rotary embedding, one rotary table per layer type (local and global bases), and no
  attention soft-capping (HF's Gemma-3 attention ignores ``attn_logit_softcapping``).

Gemma's ``sqrt(d_model)`` embedding scale never reaches this code: patched sites start from a
block's output, and the FALSE prompts run through the model's own forward. The linear layers,
norms (Gemma's ``1 + w`` gain included), MLPs and rotary tables are the model's own modules;
attention is written out (softmax over prefix and suffix scores with one shared maximum, in the
model's dtype, as HF's eager attention). Anything else raises
:class:`~mechtests.engine.suffix.protocol.SuffixEngineUnavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mechtests.engine.suffix.protocol import SuffixEngineUnavailable

__all__ = ["ARCHS", "Arch", "Decoder", "Prefix", "block_forward", "decoder_of", "rotary_tables",
           "soft_cap"]


@dataclass(frozen=True)
class Arch:
    """How one family's block differs from Llama's."""

    sandwich_norms: bool = False  # post-attention and pre/post-feedforward RMSNorms (Gemma)
    qk_norm: bool = False  # per-head RMSNorm of queries and keys before rotary (Qwen3, Gemma-3)
    attn_softcap: bool = False  # config.attn_logit_softcapping caps the scores (Gemma-2)
    rope_per_layer_type: bool = False  # rotary_emb(x, positions, layer_type) (Gemma-3)
    # where a layer's sliding window is: "none" (full attention), "config" (config's
    # sliding_window in every layer, Mistral), "layer" (each attention's own sliding_window,
    # None in full layers: Qwen2, Gemma)
    window: str = "none"


ARCHS: dict[str, Arch] = {
    "llama": Arch(),
    "mistral": Arch(window="config"),
    "qwen2": Arch(window="layer"),
    "qwen3": Arch(qk_norm=True, window="layer"),
    "gemma2": Arch(sandwich_norms=True, attn_softcap=True, window="layer"),
    "gemma3_text": Arch(sandwich_norms=True, qk_norm=True, rope_per_layer_type=True,
                        window="layer"),
}


@dataclass(frozen=True)
class Decoder:
    """The HF modules and per-layer attention settings the suffix engine reads."""

    model: Any  # the causal LM (its own forward runs the FALSE prompts)
    stack: Any  # the decoder stack: layers, final norm, rotary embedding
    blocks: list[Any]
    head: Any  # lm_head
    arch: Arch
    windows: tuple[int | None, ...]  # per layer: sliding window, None for full attention
    layer_types: tuple[str, ...]  # per layer, for per-type rotary tables
    attn_softcap: float | None
    final_softcap: float | None


def decoder_of(model: Any) -> Decoder:
    """The HF causal LM's decoder, or :class:`SuffixEngineUnavailable` saying why not."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model is None or model_type not in ARCHS:
        raise SuffixEngineUnavailable(
            f"the suffix engine needs an HF {'/'.join(ARCHS)} model; got "
            f"{type(model).__name__} ({model_type})"
        )
    arch = ARCHS[str(model_type)]
    if getattr(config, "use_bidirectional_attention", False):
        raise SuffixEngineUnavailable("the suffix engine needs causal attention")
    stack = getattr(model, "model", None)
    layers = getattr(stack, "layers", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(layers, torch.nn.ModuleList) or head is None:
        raise SuffixEngineUnavailable("model has no model.layers / lm_head")
    blocks = list(layers)
    for block in blocks:
        _check_block(stack, block, arch)
    n = len(blocks)
    windows = tuple(_window(arch, config, b.self_attn) for b in blocks)
    types = tuple(getattr(config, "layer_types", None) or ("full_attention",) * n)
    cap = getattr(config, "attn_logit_softcapping", None) if arch.attn_softcap else None
    return Decoder(model, stack, blocks, head, arch, windows, types, cap,
                   getattr(config, "final_logit_softcapping", None))


def _window(arch: Arch, config: Any, attn: Any) -> int | None:
    source = {"none": None, "config": config, "layer": attn}[arch.window]
    window = getattr(source, "sliding_window", None)
    return None if window is None else int(window)


def _check_block(stack: Any, block: Any, arch: Arch) -> None:
    attn = getattr(block, "self_attn", None)
    needed = [(stack, "rotary_emb"), (stack, "norm"), (block, "input_layernorm"),
              (block, "post_attention_layernorm"), (block, "mlp"), (attn, "q_proj"),
              (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (attn, "head_dim"),
              (attn, "scaling")]
    if arch.sandwich_norms:
        needed += [(block, "pre_feedforward_layernorm"), (block, "post_feedforward_layernorm")]
    if arch.qk_norm:
        needed += [(attn, "q_norm"), (attn, "k_norm")]
    missing = [name for obj, name in needed if not hasattr(obj, name)]
    if missing:
        raise SuffixEngineUnavailable(f"a decoder block lacks {', '.join(missing)}")


def rotary_tables(decoder: Decoder, hidden: torch.Tensor, positions: torch.Tensor
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(cos, sin) [p, head_dim]`` of ``positions`` per layer type (one table for all layers
    unless the family has one per type)."""
    rotary = decoder.stack.rotary_emb
    if not decoder.arch.rope_per_layer_type:
        cos, sin = rotary(hidden, positions)
        return {t: (cos[0], sin[0]) for t in set(decoder.layer_types)}
    out = {}
    for t in set(decoder.layer_types):
        cos, sin = rotary(hidden, positions, t)
        out[t] = (cos[0], sin[0])
    return out


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(x / cap)`` in place (HF's order of operations); ``x`` when ``cap`` is None."""
    return x if cap is None else x.div_(cap).tanh_().mul_(cap)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass(frozen=True)
class Prefix:
    """One block's cached FALSE keys and values of the ``prefix`` positions before the suffix
    ``[pair, kv_head, prefix, head_dim]``, the rotary tables of the suffix positions, and the
    layer's attention settings."""

    keys: torch.Tensor
    values: torch.Tensor
    cos: torch.Tensor  # [p, head_dim]
    sin: torch.Tensor
    window: int | None = None  # sliding window (keys j > i - window), None: full attention
    softcap: float | None = None  # attention-score soft-cap


def _visible(prefix_len: int, p: int, nq: int, window: int | None, device: torch.device
             ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Which keys the last ``nq`` of ``p`` suffix queries see: ``(prefix [nq, P] or None when
    all, own [nq, p])``. Query ``t`` of the suffix sits at position ``prefix_len + t``."""
    t = torch.arange(p - nq, p, device=device)[:, None]
    u = torch.arange(p, device=device)[None]
    own = u <= t
    if window is None or prefix_len + p <= window:
        return None, own
    own &= t - u < window
    j = torch.arange(prefix_len, device=device)[None]
    return j > prefix_len + t - window, own


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix,
               scale: float) -> torch.Tensor:
    """Causal attention of the last ``q`` of each site's ``p`` tokens over the shared prefix and
    the site's own keys. ``q [n, kv_head, site, group, q, hd]``; ``k, v [n, kv_head, site, p,
    hd]``; returns ``[n, kv_head, site, group, q, hd]``."""
    n, hk, s, g, nq, hd = q.shape
    p = k.shape[3]
    prefix_len = prefix.keys.shape[2]
    flat = q.reshape(n, hk, s * g * nq, hd)
    pre = torch.matmul(flat, prefix.keys.transpose(-1, -2)).mul_(scale)  # [n, hk, s*g*q, P]
    own = torch.matmul(q.reshape(n, hk, s, g * nq, hd), k.transpose(-1, -2)).mul_(scale)
    pre, own = soft_cap(pre, prefix.softcap), soft_cap(own, prefix.softcap)
    seen_pre, seen_own = _visible(prefix_len, p, nq, prefix.window, q.device)
    own = own.view(n, hk, s, g, nq, p).masked_fill_(~seen_own, float("-inf"))
    pre = pre.view(n, hk, s, g, nq, -1)
    if seen_pre is not None:
        pre = pre.masked_fill_(~seen_pre, float("-inf"))
    top = own.amax(-1, keepdim=True)  # finite: every query sees its own key
    if prefix_len:
        top = torch.maximum(pre.amax(-1, keepdim=True), top)
    pre = pre.sub_(top).exp_()
    own = own.sub_(top).exp_()
    total = pre.sum(-1, keepdim=True) + own.sum(-1, keepdim=True)
    out = torch.matmul(pre.view(n, hk, s * g * nq, -1), prefix.values).view(n, hk, s, g, nq, hd)
    out += torch.matmul(own.view(n, hk, s, g * nq, p), v).view(n, hk, s, g, nq, hd)
    return out.div_(total)


def block_forward(decoder: Decoder, block: Any, hidden: torch.Tensor, prefix: Prefix,
                  last_only: bool,
                  kv_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                  ) -> torch.Tensor:
    """One decoder block on ``hidden [n, site, p, d]`` after the cached prefix; with
    ``last_only`` only the last position's output ``[n, site, 1, d]``. ``kv_out`` receives
    the block's keys (rotated) and values of the ``p`` tokens, ``[n, kv_head, site, p, hd]``."""
    arch = decoder.arch
    attn = block.self_attn
    n, s, p, _ = hidden.shape
    hd = attn.head_dim
    x = block.input_layernorm(hidden)
    xq = x[:, :, -1:] if last_only else x
    nq = xq.shape[2]
    k = attn.k_proj(x).view(n, s, p, -1, hd)
    hk = k.shape[3]
    q = attn.q_proj(xq).view(n, s, nq, hk, -1, hd)  # heads h = kv_head * group + g (repeat_kv)
    if arch.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = _rope(q, prefix.cos[-nq:, None, None], prefix.sin[-nq:, None, None])
    k = _rope(k, prefix.cos[:, None], prefix.sin[:, None])
    k = k.permute(0, 3, 1, 2, 4)
    v = attn.v_proj(x).view(n, s, p, hk, hd).permute(0, 3, 1, 2, 4)
    if kv_out is not None:
        kv_out.append((k, v))
    out = _attention(q.permute(0, 3, 1, 4, 2, 5), k, v, prefix, attn.scaling)
    mixed = attn.o_proj(out.permute(0, 2, 4, 1, 3, 5).reshape(n, s, nq, -1))
    if not arch.sandwich_norms:
        h = hidden[:, :, -nq:] + mixed
        return h + block.mlp(block.post_attention_layernorm(h))
    h = hidden[:, :, -nq:] + block.post_attention_layernorm(mixed)
    return h + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
