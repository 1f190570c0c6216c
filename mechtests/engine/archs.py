"""Where each site lives inside a HuggingFace decoder: one small declarative table.

Every supported architecture is a pre-norm decoder whose block computes::

    resid_mid  = resid_pre + attn_contrib(norm(resid_pre))
    resid_post = resid_mid + mlp_contrib(norm(resid_mid))

An :class:`ArchSpec` names, relative to one decoder layer, the module whose *output* is the
attention contribution (``self_attn`` for Llama/Mistral/Qwen2; Gemma-2 adds a post-attention
RMSNorm, so its contribution is ``post_attention_layernorm``'s output), the module whose output
is the MLP contribution, and the down projection (whose input is ``mlp.hook_post``). Lookup is
by ``config.model_type``, never by a substring of a path or a name. Gemma-3 has Gemma-2's
block (its q/k norms, sliding windows and embedding scale live inside modules the hooks do not
cross); Qwen3 has Llama's (q/k norms inside attention).

A model type without an entry is recognised from its module tree by
:func:`mechtests.engine.layout.recognise` (through
:func:`~mechtests.engine.layout.spec_for_model`), so a new pre-norm decoder needs no code
change; the table only saves that probe for the known types.

Example:
    >>> arch_spec("gemma2").attn_contrib
    'post_attention_layernorm'
"""

from __future__ import annotations

from dataclasses import dataclass

from mechtests.errors import CheckpointError


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture (relative to the CausalLM, or to one decoder layer)."""

    layers: str = "model.layers"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn_contrib: str = "self_attn"
    mlp_contrib: str = "mlp"
    mlp_down: str = "mlp.down_proj"
    norm_kind: str = "rmsnorm"
    norm_offset: float = 0.0  # the final norm multiplies by (norm_offset + weight)


_LLAMA_LIKE = ArchSpec()
_GEMMA_LIKE = ArchSpec(
    attn_contrib="post_attention_layernorm",
    mlp_contrib="post_feedforward_layernorm",
    norm_offset=1.0,
)
ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma2": _GEMMA_LIKE,
    "gemma3_text": _GEMMA_LIKE,
}


def arch_spec(model_type: str) -> ArchSpec:
    """The spec of ``config.model_type``; a :class:`CheckpointError` listing the known ones."""
    if model_type not in ARCH_SPECS:
        raise CheckpointError(
            f"architecture {model_type!r} (config.json model_type) has no entry in the site "
            f"table; expected one of {', '.join(sorted(ARCH_SPECS))}. Fix: load the model "
            "(its layout is then recognised from the module tree: spec_for_model), or add an "
            "ArchSpec entry in mechtests/engine/archs.py naming its attention/MLP output modules."
        )
    return ARCH_SPECS[model_type]
