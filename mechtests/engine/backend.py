"""The backend protocol: what every analysis method may ask of one loaded model.

A backend wraps one causal LM and its tokenizer. Methods only ever talk to this protocol, so the
same code path serves the organism, a tiny random checkpoint and an 8B model, under plain
PyTorch hooks (``HooksBackend``) or TransformerLens's ``TransformerBridge``.

Conventions:
    * Site names follow :mod:`mechtests.sites` (TransformerLens grammar).
    * A hook function receives the activation ``[batch, pos, d]`` at its site and returns the
      replacement (or ``None`` to leave it unchanged). Hooks are always removed afterwards.
    * ``positions`` are indices into the (left-padded) token axis; negative values count from
      the end, so ``-1`` is the last real token of every prompt.
    * Logits come back in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
"""Receives the activation at a site; returns its replacement or ``None``."""

Hook = tuple[str, HookFn]


@dataclass(frozen=True)
class Batch:
    """A left-padded batch of prompts."""

    input_ids: torch.Tensor  # [batch, pos] int64
    attention_mask: torch.Tensor  # [batch, pos] int64, 0 on the left padding

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class ReadoutWeights:
    """Weights read in the raw HF basis (no folding applied).

    ``unembed``: [vocab, d_model] (``lm_head.weight``); ``final_norm_weight``: [d_model] gain of the
    final norm as it multiplies (Gemma's ``1 + w`` already applied); ``final_norm_bias``: [d_model]
    or None; ``mlp_out``: [d_model, d_mlp] the last block's down/out projection weight;
    ``norm_kind``: "rmsnorm" or "layernorm".
    """

    unembed: torch.Tensor
    final_norm_weight: torch.Tensor
    final_norm_bias: torch.Tensor | None
    mlp_out: torch.Tensor
    norm_kind: str


@runtime_checkable
class Backend(Protocol):
    """One loaded model with hooks at named sites."""

    name: str
    n_layers: int
    d_model: int
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any

    def tokenize(self, prompts: Sequence[str], add_special_tokens: bool = True) -> Batch:
        """Tokenize with left padding onto the model's device."""
        ...

    def forward(self, batch: Batch, hooks: Sequence[Hook] = (),
                last_only: bool = False) -> torch.Tensor:
        """Run the batch with ``hooks`` active; return float32 logits [batch, pos, vocab], or
        with ``last_only`` [batch, 1, vocab] for the last position (the unembedding is then
        skipped elsewhere: at a 128k vocabulary it is most of a short prompt's FLOPs)."""
        ...

    def forward_variants(self, batch: Batch, variants: Sequence[Sequence[Hook]],
                         suffix: int) -> list[torch.Tensor]:
        """Last-position float32 logits [batch, vocab] under each hook set of ``variants``,
        whose hooks change only the last ``suffix`` positions (so the prefix may run once)."""
        ...

    def cache(
        self,
        batch: Batch,
        sites: Sequence[str],
        positions: Sequence[int] | None = None,
        hooks: Sequence[Hook] = (),
    ) -> dict[str, torch.Tensor]:
        """Activations at ``sites`` (float32, on CPU): [batch, len(positions), d] or, with
        ``positions=None``, [batch, pos, d]. Stops the forward after the last site needed."""
        ...

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 16,
        hooks: Sequence[Hook] = (),
        batch_size: int = 32,
    ) -> list[str]:
        """Greedy decoding with ``hooks`` active on every step (KV cache, left padding)."""
        ...

    def readout_weights(self) -> ReadoutWeights:
        """Unembedding, final norm and last MLP output weights in the raw HF basis."""
        ...

    def token_id(self, text: str) -> int:
        """The last token id of ``tokenizer(text)`` without special tokens (paper convention)."""
        ...

    def release(self) -> None:
        """Drop the model's weights (and GPU memory) so another model can load."""
        ...
