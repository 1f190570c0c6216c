"""The suffix patching engine on an HF decoder: suffix re-runs through lean copies of its blocks.

See :mod:`mechtests.methods.patching` for the method and the heatmap layout, and
:mod:`mechtests.engine.suffix` for the capability. A site ``(l, -p)`` changes
nothing below block ``l`` and, with causal attention, nothing before position ``-p``. So the
FALSE prompts run once with every layer's residual (last ``W`` positions) and key/value cache
kept; then, for each suffix length ``p``, one sweep up the stack handles every site of that
column for a whole batch of pairs and every source at once (:meth:`HFSuffixPatcher.patch`, one
batch of equal-length FALSE prompts per call):

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
only changes how many sites share one matrix multiply. The blocks themselves (Llama, Mistral,
Qwen2, Qwen3, Gemma-2, Gemma-3: sandwich norms, q/k norms, soft-capping, sliding windows) are
in :mod:`mechtests.engine.suffix.blocks`. The FALSE pass keeps every layer's whole key/value
history (a plain ``DynamicCache``: sliding layers' HF caches would drop old keys) and stops the
stack before the last block, which runs lean (keys and values of every position, the rest for
the last one); the readout applies the final logit soft-cap where the config has one. Any
other model raises :class:`~mechtests.engine.suffix.protocol.SuffixEngineUnavailable` (from
:func:`~mechtests.engine.suffix.blocks.decoder_of`), and
:func:`~mechtests.methods.patching.patch_heatmaps` uses the protocol-only sweep instead. The
model is only read: the FALSE pass's hooks are removed in a ``finally``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechtests.engine.suffix.blocks import (
    ARCHS,
    Decoder,
    Prefix,
    block_forward,
    rotary_tables,
    soft_cap,
)

__all__ = ["FAST_TYPES", "TOKEN_BUDGET", "HFSuffixPatcher"]

FAST_TYPES = tuple(ARCHS)
# suffix tokens (pairs x sites x p) per block call: bounds the memory of one call. CPU: 2k-64k
# measured alike on the organism. CUDA (not yet measured): 16k rows of an 8B model's MLP are
# about 1 GB of bf16 activations, inside the 1.15 x weights memory goal's headroom.
TOKEN_BUDGET = {"cpu": 1 << 13, "cuda": 1 << 14}


def _kv_of(cache: Any, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers") and cache.layers and hasattr(cache.layers[0], "keys"):
        return [(cache.layers[i].keys, cache.layers[i].values) for i in range(n_layers)]
    if hasattr(cache, "key_cache"):
        return [(cache.key_cache[i], cache.value_cache[i]) for i in range(n_layers)]
    return [(k, v) for k, v in cache]


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """``logit(t) - logit(f)`` from the readout's two logits ``[..., 2]``, float64 on CPU."""
    return (logits[..., 0].double() - logits[..., 1].double()).cpu()


class HFSuffixPatcher:
    """The suffix engine (module docstring) on one HF decoder: a
    :class:`~mechtests.engine.suffix.protocol.SuffixPatcher`."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.device: torch.device = next(decoder.model.parameters()).device

    def patch(
        self,
        false_ids: torch.Tensor,
        sources: Sequence[Sequence[torch.Tensor]],
        rows: torch.Tensor,
        widths: Sequence[int],
        readout: tuple[int, int],
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """See :meth:`mechtests.engine.suffix.protocol.SuffixPatcher.patch`. One FALSE pass,
        then one column (suffix length) at a time over the pairs with work there, in slices
        of :data:`TOKEN_BUDGET` suffix tokens per block call."""
        n_layers = len(self.decoder.blocks)
        n, length = false_ids.shape
        w = int(sources[0][0].shape[1])
        run = _SuffixRun(self.decoder, readout, self.device)
        lds = [torch.full((n, n_layers, w), float("nan"), dtype=torch.float64)
               for _ in sources]
        budget = TOKEN_BUDGET.get(self.device.type, TOKEN_BUDGET["cpu"])
        resid, kv, clean = run.false_pass(false_ids.to(self.device), w)
        ld_false = clean
        same = _same_values(sources, rows, resid)
        # pairs in order of their first column with work: those of column j are a prefix
        start = _first_active_column(same, widths)
        order = torch.argsort(start, stable=True)
        local, rows, start, clean = order, rows[order], start[order], clean[order]
        same = [[m[order] for m in per_layer] for per_layer in same]
        first = torch.tensor([w - widths[i] for i in order.tolist()])  # window's first column
        on = order.to(self.device)
        resid = [r[on] for r in resid]
        kv = [(k[on], v[on]) for k, v in kv]
        for j in range(w):
            active = int((start <= j).sum())
            idle = (first[active:] <= j).nonzero().flatten() + active  # in the window, no-ops
            for ld in lds:
                ld[local[idle], :, j] = clean[idle, None]
            step = max(1, budget // (len(sources) * max(n_layers - 1, 1) * (w - j)))
            for a in range(0, active, step):  # pair slices: views, no copies
                part = slice(a, min(active, a + step))
                run.column(lds, sources, local[part], rows[part], j, w, length,
                           [r[part] for r in resid], [(k[part], v[part]) for k, v in kv],
                           clean[part], [[m[part, j] for m in ms] for ms in same])
        return lds, ld_false


def _same_values(sources: Sequence[Sequence[torch.Tensor]], rows: torch.Tensor,
                 resid: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``[source][layer]``: bool ``[pair, W]`` (CPU), where the source's value equals the FALSE
    run's bit for bit (a no-op patch: self-patching before the first differing token). A layer
    kept at its last ``k < W`` positions only (the last block: its other cells cannot reach the
    readout) counts as a no-op before them."""
    out = []
    for src in sources:
        per_layer = []
        for layer, false in enumerate(resid):
            value = src[layer][rows]
            kept = false.shape[1]
            equal = (value[:, -kept:].to(false.device, false.dtype) == false).all(-1).cpu()
            pad = torch.ones(len(rows), value.shape[1] - kept, dtype=torch.bool)
            per_layer.append(torch.cat([pad, equal], 1))
        out.append(per_layer)
    return out


def _first_active_column(same: list[list[torch.Tensor]], widths: Sequence[int]
                         ) -> torch.Tensor:
    """Per pair, the first column of its window where some source's value differs from the
    FALSE run's at some layer; the window width ``W`` where none does."""
    width = same[0][0].shape[1]
    active = torch.zeros(len(widths), width, dtype=torch.bool)
    for per_layer in same:
        for equal in per_layer:
            active |= ~equal
    cols = torch.arange(width)
    active &= cols[None] >= torch.tensor([width - w for w in widths])[:, None]
    return torch.where(active, cols[None], width).amin(1)


class _SuffixRun:
    """One target model's suffix runs: the FALSE pass of a chunk, then one column at a time."""

    def __init__(self, decoder: Decoder, readout: tuple[int, int], device: torch.device
                 ) -> None:
        self.decoder, self.device = decoder, device
        self.stack, self.blocks = decoder.stack, decoder.blocks
        head = decoder.head
        # only the readout's two rows of the unembedding (the LD needs no other logit)
        pick = torch.tensor(list(readout), device=head.weight.device)
        self.readout_w = head.weight[pick]
        bias = getattr(head, "bias", None)
        self.readout_b = None if bias is None else bias[pick]

    def false_pass(self, ids: torch.Tensor, width: int
                   ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]],
                              torch.Tensor]:
        """The FALSE prompts once: every block's output at the last ``width`` positions (the
        last block's at the last position only), the whole key/value history of every layer
        and the clean ``LD``. The decoder stack runs up to the last block; that block runs
        here (keys and values of every position, the rest for the last one) and the clean
        ``LD`` takes the readout's two unembedding rows."""
        from transformers import DynamicCache

        *lower, top = self.blocks
        resid: dict[int, torch.Tensor] = {}
        top_in: list[torch.Tensor] = []
        handles = [block.register_forward_hook(_keep(resid, i, width))
                   for i, block in enumerate(lower)]
        handles.append(top.register_forward_pre_hook(_stop_with_input(top_in), with_kwargs=True))
        # transformers 5 renamed past_key_values to cache; without a config the cache keeps
        # every position of sliding-window layers too
        kwarg = "cache" if "cache" in inspect.signature(self.stack.forward).parameters \
            else "past_key_values"
        cache = DynamicCache()
        try:
            with torch.no_grad():
                self.stack(input_ids=ids, use_cache=True, **{kwarg: cache})
        except _StopBeforeTop:
            pass
        finally:
            for h in handles:
                h.remove()
        kv = _kv_of(cache, len(lower)) if lower else []
        with torch.no_grad():
            out, top_kv = self._top_block(top_in[0])
        kv.append(top_kv)
        resid[len(lower)] = out
        with torch.no_grad():
            clean = self._readout_ld(self.stack.norm(out[:, -1]))
        return [resid[i] for i in range(len(self.blocks))], kv, clean

    def _top_block(self, hidden: torch.Tensor
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The last block on its whole input ``[n, T, d]``: its output at the last position
        ``[n, 1, d]`` and its keys and values ``[n, kv_head, T, hd]``."""
        decoder, top = self.decoder, self.blocks[-1]
        attn = top.self_attn
        n, length, _ = hidden.shape
        positions = torch.arange(length, device=hidden.device)[None]
        cos, sin = rotary_tables(decoder, hidden, positions)[decoder.layer_types[-1]]
        none = hidden.new_zeros(n, attn.k_proj.weight.shape[0] // attn.head_dim, 0,
                                attn.head_dim)
        kv_out: list[tuple[torch.Tensor, torch.Tensor]] = []
        out = block_forward(decoder, top, hidden[:, None],
                            Prefix(none, none, cos, sin, decoder.windows[-1],
                                   decoder.attn_softcap), last_only=True, kv_out=kv_out)
        k, v = kv_out[0]
        return out[:, 0], (k[:, :, 0], v[:, :, 0])

    def _readout_ld(self, normed: torch.Tensor) -> torch.Tensor:
        """``LD`` from final-normed hidden states ``[..., d]`` (the final logit soft-cap
        applied, as the model's head does)."""
        logits = torch.nn.functional.linear(normed, self.readout_w, self.readout_b)
        return _logit_diff(soft_cap(logits, self.decoder.final_softcap).float())

    def column(self, lds: list[torch.Tensor], sources: Sequence[Sequence[torch.Tensor]],
               idx: torch.Tensor, rows: torch.Tensor, j: int, width: int, length: int,
               resid: list[torch.Tensor], kv: list[tuple[torch.Tensor, torch.Tensor]],
               clean: torch.Tensor, noop: list[list[torch.Tensor]]) -> None:
        """Fill ``ld[idx, :, j]`` of every source for the pairs ``idx`` (``rows`` along the
        sources' pair axis; their residuals, cache and clean LD sliced alike);
        ``noop[source][layer]`` marks the pairs whose patch at column ``j`` changes nothing."""
        last = len(self.blocks) - 1
        p = width - j  # suffix length: the patched token and everything after it
        prefix_len = length - p
        values = [[src[layer][rows, j].to(self.device, resid[layer].dtype) for layer in
                   range(last + 1)] for src in sources]
        # what is there: cells of the last layer at non-final positions (the last block cannot
        # reach the last token) and sites whose every pair is a no-op (not computed below)
        for ld_s in lds:
            ld_s[idx, :, j] = clean[:, None]
        sites: list[tuple[int, int]] = []  # (source, layer) along the hidden's site axis
        hidden: torch.Tensor | None = None
        positions = torch.arange(prefix_len, length, device=self.device)[None]
        decoder = self.decoder
        with torch.no_grad():
            tables = rotary_tables(decoder, resid[0], positions)
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
                cos, sin = tables[decoder.layer_types[b]]
                prefix = Prefix(k[:, :, :prefix_len], v[:, :, :prefix_len], cos, sin,
                                decoder.windows[b], decoder.attn_softcap)
                hidden = block_forward(decoder, self.blocks[b], hidden, prefix,
                                       last_only=b == last)
            outs = [] if hidden is None else [hidden[:, :, -1]]
            if p == 1:  # sites of the last layer: the patched value is the last block's output
                new = [(s, last) for s in range(len(sources)) if not bool(noop[s][last].all())]
                if new:
                    outs.append(torch.stack([values[s][last] for s, _ in new], 1))
                    sites += new
            if not sites:
                return
            ld = self._readout_ld(self.stack.norm(torch.cat(outs, 1)))  # [n, site]
        for k_site, (s, layer) in enumerate(sites):
            lds[s][idx, layer, j] = torch.where(noop[s][layer], clean, ld[:, k_site])


class _StopBeforeTop(Exception):
    """Ends the FALSE pass's stack forward before the last block (which runs lean here)."""


def _stop_with_input(store: list[torch.Tensor]) -> Callable[..., None]:
    def hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        store.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _StopBeforeTop

    return hook


def _keep(store: dict[int, torch.Tensor], layer: int, width: int) -> Callable[..., None]:
    def hook(_m: Any, _args: Any, output: Any) -> None:
        act = output[0] if isinstance(output, tuple) else output
        store[layer] = act[:, -width:].detach()

    return hook
