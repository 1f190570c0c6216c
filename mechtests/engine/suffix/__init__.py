"""The suffix patching engine: a capability a backend may offer beside the Backend protocol.

Counterfactual activation patching (:mod:`mechtests.methods.patching`) writes one TRUE
activation into a FALSE run at a site ``(layer l, position -p)`` and reads the logit
difference. Such a patch changes nothing below block ``l`` and, with causal attention, nothing
before position ``-p``; so the FALSE prompts can run once and each site re-run only its last
``p`` tokens through the blocks above ``l``, attending to the cached FALSE prefix. The
:class:`~mechtests.engine.backend.Backend` protocol has no "start at block l" call, so this
engine works on the HF modules of a loaded model (read-only) and lives here, in the engine;
methods reach it through the two small protocols below and fall back to the protocol-only
sweep when a backend does not offer it.

* :class:`SuffixPatcher` - patches a batch of equal-length FALSE prompts with the TRUE
  activations of one or more sources and returns their heatmaps.
* :class:`OffersSuffixPatcher` - a backend with ``suffix_patcher()``: the patcher for its
  model, or :class:`SuffixEngineUnavailable` saying why there is none.

The HF implementation is :class:`mechtests.engine.suffix.runs.HFSuffixPatcher` (the FALSE pass
and the per-column sweeps); its decoder blocks, per architecture, are in
:mod:`mechtests.engine.suffix.blocks`. :func:`hf_suffix_patcher` builds it for an HF causal LM.

Example:
    >>> patcher = backend.suffix_patcher()                                 # doctest: +SKIP
    >>> lds, ld_false = patcher.patch(ids, [src], rows, [14] * len(rows), (t, f))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from mechtests.engine.suffix.protocol import (
    OffersSuffixPatcher,
    SuffixEngineUnavailable,
    SuffixPatcher,
)

__all__ = ["OffersSuffixPatcher", "SuffixEngineUnavailable", "SuffixPatcher",
           "hf_suffix_patcher"]


def hf_suffix_patcher(model: Any) -> SuffixPatcher:
    """The suffix engine for an HF causal LM of a covered architecture
    (:data:`mechtests.engine.suffix.blocks.ARCHS`), or :class:`SuffixEngineUnavailable`."""
    from mechtests.engine.suffix.blocks import decoder_of
    from mechtests.engine.suffix.runs import HFSuffixPatcher

    return HFSuffixPatcher(decoder_of(model))
