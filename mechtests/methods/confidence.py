"""Confidence: next-token entropy, and how much of it runs through chosen final-layer neurons.

Beyond Du et al. 2025 (who compare entropy-neuron sets by weights only, paper code
Confidence/IoU.py), this
module measures the confidence shift itself and the share of it that the entropy neurons carry,
with the mean-ablation of Stolfo et al. 2024 (bpwu1/confidence-regulation-neurons,
``ablations/run_and_store_ablation_results.py``):

* **entropy** of the next-token distribution at each real token position (natural log; fp32
  softmax over the logits, float64 means), averaged per prompt;
* **mean-ablation**: the chosen neurons' activations (``blocks.L.mlp.hook_post`` of the last
  block) are replaced at every position by their mean over all real positions of the prompts;
* **total effect**: the ablated model's own forward, so the final norm's scale is recomputed;
* **direct effect**: the clean final residual plus the ablation's change to it, passed through
  the final norm with the *clean* scale frozen and the unembedding. For a last-layer neuron the
  only path to the logits is the final residual, so total minus direct is exactly the part that
  acts through the norm's scale (the entropy-neuron mechanism).

Logits are recomputed from the captured final residual by :class:`FinalReadout` (final norm,
unembedding, optional soft-capping) for clean, total and direct alike, so the three are
comparable; :attr:`AblationEntropies.readout_error` records how far the recomputed clean logits
are from the backend's own at each prompt's last position (a plumbing check). Only the kept
positions are unembedded, a block of rows at a time.

Example:
    >>> logits = torch.zeros(1, 2, 4)
    >>> round(float(token_entropy(logits)[0, 0]), 4)  # uniform over 4 tokens: log 4
    1.3863
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mechtests.engine.backend import Backend, Batch, HookFn, ReadoutWeights
from mechtests.phases import timed_phase

__all__ = [
    "AblationEntropies",
    "FinalReadout",
    "ablation_entropies",
    "ablation_entropies_many",
    "kept_entropies",
    "mean_entropy",
    "neuron_means",
    "token_entropy",
]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last axis, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


@dataclass(frozen=True)
class FinalReadout:
    """The final norm plus unembedding, in the raw HF basis (float32)."""

    unembed: torch.Tensor  # [vocab, d_model]
    gain: torch.Tensor  # [d_model], as it multiplies
    bias: torch.Tensor | None
    eps: float
    norm_kind: str = "rmsnorm"
    softcap: float | None = None  # Gemma-2 final_logit_softcapping

    @classmethod
    def from_weights(
        cls, weights: ReadoutWeights, eps: float, softcap: float | None = None
    ) -> FinalReadout:
        return cls(weights.unembed.float(), weights.final_norm_weight.float(),
                   None if weights.final_norm_bias is None else weights.final_norm_bias.float(),
                   float(eps), weights.norm_kind, softcap)

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=-1, keepdim=True) if self.norm_kind == "layernorm" else x

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's ``1 / rms`` (or ``1 / std``) of ``x`` ``[..., d]`` -> ``[..., 1]``."""
        xc = self._centred(x.float())
        return torch.rsqrt(xc.pow(2).mean(dim=-1, keepdim=True) + self.eps)

    def logits(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of final residuals ``x``; ``scale`` given = the norm's scale frozen."""
        x = x.float()
        s = self.scale(x) if scale is None else scale
        h = self._centred(x) * s * self.gain.to(x.device)
        if self.bias is not None:
            h = h + self.bias.to(x.device)
        out = h @ self.unembed.to(x.device).t()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def _real_positions(batch: Batch, skip_first: int) -> torch.Tensor:
    """Mask ``[batch, pos]`` of real tokens at index ``>= skip_first`` within each prompt."""
    mask = batch.attention_mask.bool()
    index = batch.attention_mask.long().cumsum(dim=-1) - 1
    return mask & (index >= skip_first)


def _sites(backend: Backend) -> tuple[str, str]:
    last = backend.n_layers - 1
    return f"blocks.{last}.mlp.hook_post", f"blocks.{last}.hook_resid_post"


@timed_phase("entropy neurons")
def neuron_means(
    backend: Backend,
    prompts: Sequence[str],
    neurons: Sequence[int],
    *,
    batch_size: int = 16,
    skip_first: int = 1,
) -> torch.Tensor:
    """Mean activation (float64) of each last-layer ``neurons`` over the real positions."""
    post_site, _ = _sites(backend)
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    total = torch.zeros(len(idx), dtype=torch.float64)
    count = 0
    for start in range(0, len(prompts), batch_size):
        batch = backend.tokenize(prompts[start : start + batch_size])
        acts = backend.cache(batch, [post_site])[post_site]  # [b, pos, d_mlp] float32 CPU
        keep = _real_positions(batch, skip_first).cpu()
        total += acts[..., idx][keep].to(torch.float64).sum(dim=0)
        count += int(keep.sum())
    if count == 0:
        raise ValueError("no real token positions to average over (prompts too short?)")
    return total / count


@dataclass(frozen=True)
class AblationEntropies:
    """Mean next-token entropy per prompt: clean, mean-ablated (total), frozen-scale (direct)."""

    clean: torch.Tensor  # [n_prompts] float64
    total: torch.Tensor
    direct: torch.Tensor
    means: torch.Tensor  # the ablation values, [n_neurons] float64
    neurons: tuple[int, ...]
    readout_error: float  # max |recomputed clean logits - backend logits|
    n_tokens: int


def _recorder(store: dict[str, torch.Tensor], name: str) -> HookFn:
    """A hook that records its activation (float32, CPU) under ``name`` and changes nothing."""

    def record(act: torch.Tensor) -> None:
        store[name] = act.detach().float().cpu()

    return record


def _ablator(idx: torch.Tensor, values: torch.Tensor) -> HookFn:
    """A hook that sets the activations of neurons ``idx`` to ``values`` at every position."""

    def ablate(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out[..., idx.to(act.device)] = values.to(act.device, act.dtype)
        return out

    return ablate


def _per_prompt(entropy: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    e = entropy.to(torch.float64) * keep
    return e.sum(dim=1) / keep.sum(dim=1).clamp(min=1)


READOUT_BYTES = 64 << 20
"""Largest block of logits :func:`kept_entropies` materialises at once (rows x vocabulary)."""


def kept_entropies(readout: FinalReadout, x: torch.Tensor, keep: torch.Tensor,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`token_entropy` of ``readout.logits(x, scale)`` ``[batch, pos]`` at the ``keep``
    positions, zero elsewhere. Only kept rows are unembedded, a block of rows at a time, so the
    full ``[batch, pos, vocab]`` logits (1.3 GB for 16 prompts of 80 tokens at a 262k
    vocabulary) are never built."""
    out = torch.zeros(keep.shape, dtype=torch.float32)
    rows = x[keep]
    frozen = None if scale is None else scale[keep]
    step = max(1, READOUT_BYTES // (4 * int(readout.unembed.shape[0])))
    parts = [token_entropy(readout.logits(rows[i : i + step],
                                          None if frozen is None else frozen[i : i + step]))
             for i in range(0, int(rows.shape[0]), step)]
    if parts:
        out[keep] = torch.cat(parts).float().cpu()
    return out


@timed_phase("entropy neurons")
def ablation_entropies(
    backend: Backend,
    prompts: Sequence[str],
    neurons: Sequence[int],
    readout: FinalReadout,
    *,
    means: torch.Tensor | None = None,
    batch_size: int = 16,
    skip_first: int = 1,
) -> AblationEntropies:
    """Per-prompt entropies with ``neurons`` of the last MLP mean-ablated (module docstring).

    ``means`` defaults to :func:`neuron_means` on the same prompts. An empty ``neurons`` gives
    ``total == direct == clean``. ``skip_first`` drops the first real positions of each prompt
    (position 0 predicts the first word from ``<bos>`` alone).
    """
    idx = list(neurons)
    if means is None:
        means = (neuron_means(backend, prompts, idx, batch_size=batch_size,
                              skip_first=skip_first) if idx else torch.zeros(0))
    return ablation_entropies_many(backend, prompts, {"": (idx, means)}, readout,
                                   batch_size=batch_size, skip_first=skip_first)[""]


@timed_phase("entropy neurons")
def ablation_entropies_many(
    backend: Backend,
    prompts: Sequence[str],
    sets: Mapping[str, tuple[Sequence[int], torch.Tensor]],
    readout: FinalReadout,
    *,
    batch_size: int = 16,
    skip_first: int = 1,
) -> dict[str, AblationEntropies]:
    """:func:`ablation_entropies` for several ``name -> (neurons, means)`` sets sharing one
    clean pass per batch. The clean pass reads the backend's logits at the last position only
    (the readout check); ablated passes stop after the last block (no unembedding)."""
    post_site, resid_site = _sites(backend)
    plans = {name: (torch.as_tensor(list(neurons), dtype=torch.long), means)
             for name, (neurons, means) in sets.items()}
    clean_all: list[torch.Tensor] = []
    total_all: dict[str, list[torch.Tensor]] = {name: [] for name in plans}
    direct_all: dict[str, list[torch.Tensor]] = {name: [] for name in plans}
    error = 0.0
    n_tokens = 0
    for start in range(0, len(prompts), batch_size):
        batch = backend.tokenize(prompts[start : start + batch_size])
        keep = _real_positions(batch, skip_first).cpu()
        n_tokens += int(keep.sum())
        seen: dict[str, torch.Tensor] = {}
        last = backend.forward(batch, hooks=[(resid_site, _recorder(seen, "clean"))],
                               last_only=True).cpu()
        x_clean = seen["clean"]
        error = max(error, float((readout.logits(x_clean[:, -1:]) - last).abs().max()))
        clean = _per_prompt(kept_entropies(readout, x_clean, keep), keep)
        clean_all.append(clean)
        for name, (idx, means) in plans.items():
            if not len(idx):
                total_all[name].append(clean)
                direct_all[name].append(clean)
                continue
            x_abl = backend.cache(batch, [resid_site], None,
                                  hooks=[(post_site, _ablator(idx, means))])[resid_site]
            total_all[name].append(_per_prompt(kept_entropies(readout, x_abl, keep), keep))
            direct_all[name].append(_per_prompt(
                kept_entropies(readout, x_abl, keep, readout.scale(x_clean)), keep))
    return {
        name: AblationEntropies(
            clean=torch.cat(clean_all),
            total=torch.cat(total_all[name]),
            direct=torch.cat(direct_all[name]),
            means=means.to(torch.float64),
            neurons=tuple(int(i) for i in idx),
            readout_error=error,
            n_tokens=n_tokens,
        )
        for name, (idx, means) in plans.items()
    }


def mean_entropy(values: torch.Tensor) -> float:
    """Mean of per-prompt entropies (NaN for none)."""
    return float(values.mean()) if values.numel() else math.nan
