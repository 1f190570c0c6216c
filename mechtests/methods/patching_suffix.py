"""The fast patching engine: suffix re-runs through lean copies of an HF Llama-like block.

See :mod:`mechtests.methods.patching` for the method and the layout. A site ``(l, -p)`` changes
nothing below block ``l`` and, with causal attention, nothing before position ``-p``. So the
FALSE prompts run once with every layer's residual (last ``W`` positions) and key/value cache
kept; then, for each suffix length ``p``, one sweep up the stack handles every site of that
column for a whole batch of pairs and every source at once:

* block ``b`` runs the sites of layers ``l < b`` together (a site of layer ``b - 1`` joins at
  block ``b``, its hidden state the FALSE residual with position ``-p`` replaced by the
  source's value), as ``hidden [pair, site, p, d]``;
* attention reads the cached FALSE prefix of each pair once for all its sites (a batched matmul
  per pair and head group, no copy of the cache per site), plus each site's own ``p`` keys with
  a causal mask;
* the last block computes only what the last token's output needs (keys and values of the
  ``p`` tokens; query, attention and MLP of the last one), then the final norm and the two
  readout rows of the unembedding give ``LD``.

Work per site: ``p`` tokens through ``L - 2 - l`` blocks and one token through the last, as
the per-site loop would need if it started at the patched layer and position; the batching
only changes how many sites share one matrix multiply. The blocks' linear layers, norms, MLP
and rotary embedding are the model's own modules; attention is written out here (softmax over
prefix and suffix scores with one shared maximum, in the model's dtype, as HF's eager
attention).

Supported: ``model_type`` llama, mistral, qwen2 with full attention in every layer (pre-norm
blocks ``h + attn(norm(h))``, ``h + mlp(norm(h))``, rotary embeddings; Qwen2's q/k/v biases
live in its linear layers). Gemma-2 (embedding scale, soft-capping, sliding layers) and any
other backend raise :class:`~mechtests.methods.patching.SuffixEngineUnavailable`, and
:func:`~mechtests.methods.patching.patch_heatmaps` uses the protocol-only sweep instead. The
model is only read: the FALSE pass's hooks are removed in a ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechtests.engine.backend import Backend
from mechtests.engine.hf_common import full_attention
from mechtests.methods.patching import (
    Readout,
    SuffixEngineUnavailable,
    _by_length,
    _check_sources,
    _chunks,
    _ld,
    _widths,
)

__all__ = ["FAST_TYPES", "patch_suffix", "patch_suffix_many"]

FAST_TYPES = ("llama", "mistral", "qwen2")
# suffix tokens (pairs x sites x p) per block call: bounds the memory of one call. CPU: 2k-64k
# measured alike on the organism. CUDA (not yet measured): 16k rows of an 8B model's MLP are
# about 1 GB of bf16 activations, inside the 1.15 x weights memory goal's headroom.
TOKEN_BUDGET = {"cpu": 1 << 13, "cuda": 1 << 14}


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
    if not full_attention(config):
        raise SuffixEngineUnavailable("the suffix engine needs full attention in every layer")
    stack = getattr(model, "model", None)
    layers = getattr(stack, "layers", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(layers, torch.nn.ModuleList) or head is None:
        raise SuffixEngineUnavailable("model has no model.layers / lm_head")
    for block in layers:
        _check_block(stack, block)
    return model, stack, layers, head


def _check_block(stack: Any, block: Any) -> None:
    attn = getattr(block, "self_attn", None)
    needed = [(stack, "rotary_emb"), (stack, "norm"), (block, "input_layernorm"),
              (block, "post_attention_layernorm"), (block, "mlp"), (attn, "q_proj"),
              (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (attn, "head_dim"),
              (attn, "scaling")]
    missing = [name for obj, name in needed if not hasattr(obj, name)]
    if missing:
        raise SuffixEngineUnavailable(f"a decoder block lacks {', '.join(missing)}")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass(frozen=True)
class _Prefix:
    """One block's cached FALSE keys and values of the ``prefix`` positions before the suffix
    ``[pair, kv_head, prefix, head_dim]`` and the rotary tables of the suffix positions."""

    keys: torch.Tensor
    values: torch.Tensor
    cos: torch.Tensor  # [p, head_dim]
    sin: torch.Tensor


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: _Prefix,
               scale: float) -> torch.Tensor:
    """Causal attention of the last ``q`` of each site's ``p`` tokens over the shared prefix and
    the site's own keys. ``q [n, kv_head, site, group, q, hd]``; ``k, v [n, kv_head, site, p,
    hd]``; returns ``[n, kv_head, site, group, q, hd]``."""
    n, hk, s, g, nq, hd = q.shape
    p = k.shape[3]
    flat = q.reshape(n, hk, s * g * nq, hd)
    pre = torch.matmul(flat, prefix.keys.transpose(-1, -2)).mul_(scale)  # [n, hk, s*g*q, P]
    own = torch.matmul(q.reshape(n, hk, s, g * nq, hd), k.transpose(-1, -2)).mul_(scale)
    # query i (of the last nq) sits at suffix position p - nq + i and sees keys 0 .. that
    causal = torch.ones(nq, p, dtype=torch.bool, device=q.device).tril(p - nq)
    own = own.view(n, hk, s, g, nq, p).masked_fill_(~causal, float("-inf"))
    pre = pre.view(n, hk, s, g, nq, -1)
    top = torch.maximum(pre.amax(-1, keepdim=True) if pre.shape[-1] else own.amax(-1, True),
                        own.amax(-1, keepdim=True))
    pre = pre.sub_(top).exp_()
    own = own.sub_(top).exp_()
    total = pre.sum(-1, keepdim=True) + own.sum(-1, keepdim=True)
    out = torch.matmul(pre.view(n, hk, s * g * nq, -1), prefix.values).view(n, hk, s, g, nq, hd)
    out += torch.matmul(own.view(n, hk, s, g * nq, p), v).view(n, hk, s, g, nq, hd)
    return out.div_(total)


def _block(block: Any, hidden: torch.Tensor, prefix: _Prefix, last_only: bool) -> torch.Tensor:
    """One pre-norm decoder block on ``hidden [n, site, p, d]`` after the cached prefix; with
    ``last_only`` only the last position's output ``[n, site, 1, d]``."""
    attn = block.self_attn
    n, s, p, _ = hidden.shape
    hd = attn.head_dim
    x = block.input_layernorm(hidden)
    xq = x[:, :, -1:] if last_only else x
    nq = xq.shape[2]
    k = attn.k_proj(x).view(n, s, p, -1, hd)
    hk = k.shape[3]
    q = attn.q_proj(xq).view(n, s, nq, hk, -1, hd)  # heads h = kv_head * group + g (repeat_kv)
    q = _rope(q, prefix.cos[-nq:, None, None], prefix.sin[-nq:, None, None])
    k = _rope(k, prefix.cos[:, None], prefix.sin[:, None])
    v = attn.v_proj(x).view(n, s, p, hk, hd)
    out = _attention(q.permute(0, 3, 1, 4, 2, 5), k.permute(0, 3, 1, 2, 4),
                     v.permute(0, 3, 1, 2, 4), prefix, attn.scaling)
    out = out.permute(0, 2, 4, 1, 3, 5).reshape(n, s, nq, -1)
    h = hidden[:, :, -nq:] + attn.o_proj(out)
    return h + block.mlp(block.post_attention_layernorm(h))


def _kv_of(cache: Any, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers") and cache.layers and hasattr(cache.layers[0], "keys"):
        return [(cache.layers[i].keys, cache.layers[i].values) for i in range(n_layers)]
    if hasattr(cache, "key_cache"):
        return [(cache.key_cache[i], cache.value_cache[i]) for i in range(n_layers)]
    return [(k, v) for k, v in cache]


def patch_suffix(
    backend: Backend,
    false_prompts: Sequence[str],
    source: Sequence[torch.Tensor],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast engine for one source: ``(ld [pair, layer, W], ld_false [pair])``."""
    lds, ld_false = patch_suffix_many(backend, false_prompts, [source], readout, widths,
                                      max_rows)
    return lds[0], ld_false


def patch_suffix_many(
    backend: Backend,
    false_prompts: Sequence[str],
    sources: Sequence[Sequence[torch.Tensor]],
    readout: Readout,
    widths: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The fast engine (module docstring) for several sources patched into the same FALSE
    runs: ``([ld [pair, layer, W] per source], ld_false [pair])``. ``max_rows`` caps the pairs
    per FALSE pass. Raises :class:`SuffixEngineUnavailable` for backends it does not support.
    """
    model, stack, layers, head = _hf_parts(backend)
    n_layers = len(layers)
    w = _check_sources(sources, len(false_prompts), n_layers)
    wids = _widths(len(false_prompts), w, widths)
    run = _SuffixRun(stack, head, readout, backend.device)
    batch, groups = _by_length(backend, false_prompts)
    lds = [torch.full((len(false_prompts), n_layers, w), float("nan"), dtype=torch.float64)
           for _ in sources]
    ld_false = torch.full((len(false_prompts),), float("nan"), dtype=torch.float64)
    budget = TOKEN_BUDGET.get(backend.device.type, TOKEN_BUDGET["cpu"])
    for length, members in groups.items():
        for chunk in _chunks(members, max_rows):
            ids = batch.input_ids[list(chunk)][:, -length:].to(backend.device)
            resid, kv, clean = run.false_pass(model, ids, w)
            idx = torch.tensor(list(chunk))
            ld_false[idx] = clean
            same = _same_values(sources, idx, resid)
            # pairs in order of their first column with work: those of column j are a prefix
            start = _first_active_column(same, [wids[i] for i in chunk])
            order = torch.argsort(start, stable=True)
            idx, start, clean = idx[order], start[order], clean[order]
            same = [[m[order] for m in per_layer] for per_layer in same]
            first = torch.tensor([w - wids[i] for i in idx.tolist()])  # window's first column
            on = order.to(backend.device)
            resid = [r[on] for r in resid]
            kv = [(k[on], v[on]) for k, v in kv]
            for j in range(w):
                n = int((start <= j).sum())
                idle = (first[n:] <= j).nonzero().flatten() + n  # in the window, all no-ops
                for ld in lds:
                    ld[idx[idle], :, j] = clean[idle, None]
                step = max(1, budget // (len(sources) * max(n_layers - 1, 1) * (w - j)))
                for a in range(0, n, step):  # pair slices: views, no copies
                    part = slice(a, min(n, a + step))
                    run.column(lds, sources, idx[part], j, w, length,
                               [r[part] for r in resid], [(k[part], v[part]) for k, v in kv],
                               clean[part], [[m[part, j] for m in ms] for ms in same])
    return lds, ld_false


def _same_values(sources: Sequence[Sequence[torch.Tensor]], idx: torch.Tensor,
                 resid: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``[source][layer]``: bool ``[pair, W]`` (CPU), where the source's value equals the FALSE
    run's bit for bit (a no-op patch: self-patching before the first differing token)."""
    return [[(src[layer][idx].to(false.device, false.dtype) == false).all(-1).cpu()
             for layer, false in enumerate(resid)] for src in sources]


def _first_active_column(same: list[list[torch.Tensor]], wids: Sequence[int]) -> torch.Tensor:
    """Per pair, the first column of its window where some source's value differs from the
    FALSE run's at some layer; the window width ``W`` where none does."""
    width = same[0][0].shape[1]
    active = torch.zeros(len(wids), width, dtype=torch.bool)
    for per_layer in same:
        for equal in per_layer:
            active |= ~equal
    cols = torch.arange(width)
    active &= cols[None] >= torch.tensor([width - w for w in wids])[:, None]
    return torch.where(active, cols[None], width).amin(1)


class _SuffixRun:
    """One target model's suffix runs: the FALSE pass of a chunk, then one column at a time."""

    def __init__(self, stack: Any, head: Any, readout: Readout, device: torch.device) -> None:
        self.stack, self.device = stack, device
        self.blocks = list(stack.layers)
        # only the readout's two rows of the unembedding (the LD needs no other logit)
        pick = torch.tensor(list(readout), device=head.weight.device)
        self.readout_w = head.weight[pick]
        bias = getattr(head, "bias", None)
        self.readout_b = None if bias is None else bias[pick]
        self.readout = readout

    def false_pass(self, model: Any, ids: torch.Tensor, width: int
                   ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]],
                              torch.Tensor]:
        """The FALSE prompts once: every block's output at the last ``width`` positions, the
        key/value cache and the clean ``LD``."""
        resid: dict[int, torch.Tensor] = {}
        handles = [block.register_forward_hook(_keep(resid, i, width))
                   for i, block in enumerate(self.blocks)]
        try:
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        kv = _kv_of(getattr(out, "cache", None) or out.past_key_values, len(self.blocks))
        return [resid[i] for i in range(len(self.blocks))], kv, _ld(out.logits[:, -1].float(),
                                                               self.readout)

    def column(self, lds: list[torch.Tensor], sources: Sequence[Sequence[torch.Tensor]],
               idx: torch.Tensor, j: int, width: int, length: int, resid: list[torch.Tensor],
               kv: list[tuple[torch.Tensor, torch.Tensor]], clean: torch.Tensor,
               noop: list[list[torch.Tensor]]) -> None:
        """Fill ``ld[idx, :, j]`` of every source for the pairs ``idx`` (their residuals, cache
        and clean LD sliced alike); ``noop[source][layer]`` marks the pairs whose patch at
        column ``j`` changes nothing."""
        last = len(self.blocks) - 1
        p = width - j  # suffix length: the patched token and everything after it
        prefix_len = length - p
        values = [[src[layer][idx, j].to(self.device, resid[layer].dtype) for layer in
                   range(last + 1)] for src in sources]
        # what is there: cells of the last layer at non-final positions (the last block cannot
        # reach the last token) and sites whose every pair is a no-op (not computed below)
        for ld_s in lds:
            ld_s[idx, :, j] = clean[:, None]
        sites: list[tuple[int, int]] = []  # (source, layer) along the hidden's site axis
        hidden: torch.Tensor | None = None
        positions = torch.arange(prefix_len, length, device=self.device)[None]
        with torch.no_grad():
            for b in range(1, last + 1):
                new = [(s, b - 1) for s in range(len(sources)) if not bool(noop[s][b - 1].all())]
                if new:
                    patched = resid[b - 1][:, None, j:].repeat(1, len(new), 1, 1)
                    patched[:, :, 0] = torch.stack([values[s][layer] for s, layer in new], 1)
                    hidden = patched if hidden is None else torch.cat([hidden, patched], 1)
                    sites += new
                if hidden is None:
                    continue
                k, v = kv[b]
                cos, sin = self.stack.rotary_emb(hidden, positions)
                prefix = _Prefix(k[:, :, :prefix_len], v[:, :, :prefix_len], cos[0], sin[0])
                hidden = _block(self.blocks[b], hidden, prefix, last_only=b == last)
            outs = [] if hidden is None else [hidden[:, :, -1]]
            if p == 1:  # sites of the last layer: the patched value is the last block's output
                new = [(s, last) for s in range(len(sources)) if not bool(noop[s][last].all())]
                if new:
                    outs.append(torch.stack([values[s][last] for s, _ in new], 1))
                    sites += new
            if not sites:
                return
            out = torch.cat(outs, 1)  # [n, site, d]
            logits = torch.nn.functional.linear(self.stack.norm(out), self.readout_w,
                                                self.readout_b).float()
        ld = _ld(logits, (0, 1))  # [n, site]
        for k_site, (s, layer) in enumerate(sites):
            lds[s][idx, layer, j] = torch.where(noop[s][layer], clean, ld[:, k_site])


def _keep(store: dict[int, torch.Tensor], layer: int, width: int) -> Callable[..., None]:
    def hook(_m: Any, _args: Any, output: Any) -> None:
        act = output[0] if isinstance(output, tuple) else output
        store[layer] = act[:, -width:].detach()

    return hook
