"""Counterfactual activation patching over (layer, position) sites, batched.

The method of Du et al. (paper code Knowledge+Truthfulness/patching.py:patching_one_model,
``patching.py:patching_one_model``): for a pair of
prompts (TRUE statement, FALSE statement) of equal token length and every site ``(l, p)``, run the
FALSE prompt with the residual stream after block ``l`` (``blocks.l.hook_resid_post``, nnsight
``layers[l].output[0]``) at position ``p`` replaced by the TRUE run's value there, and read
``LD = logit(" TRUE") - logit(" FALSE")`` at the last position. Cross-model patching
(section 3) is the same with the TRUE activations taken from another model; they come in as a
tensor, so only the target model is ever in memory.

Heatmap layout everywhere: ``ld[pair, layer, column]`` where column ``j`` of a width-``W`` window
is the position ``-(W - j)`` (reading order, the last column is the last token). A pair whose
window is narrower (``widths[i] < W``) gets NaN in its first ``W - widths[i]`` columns.

Three engines compute the same numbers:

* :func:`patch_loop` - the reference: one forward per site at batch 1, through the backend
  protocol (the paper's loop; :mod:`~mechtests.methods.patching.sweep`).
* :func:`patch_sweep` - protocol only: many sites per forward, each batch row a copy of a
  FALSE prompt, one hook per layer writing the TRUE activation into its rows at their positions.
  It works on any backend but does the full forward for every site.
* :func:`patch_suffix` - the fast engine for HuggingFace decoders of the Llama, Mistral, Qwen2,
  Qwen3, Gemma-2 and Gemma-3 families, a capability the backend offers
  (``backend.suffix_patcher()``, :mod:`mechtests.engine.suffix`; driven from
  :mod:`~mechtests.methods.patching.suffix`). A site's patch changes
  nothing below its layer and, with causal attention, nothing before its position. So the FALSE
  prompts run once (keeping every layer's residual and key/value cache); then, per column
  (position ``-p``), one sweep up the stack runs every layer's site of that column for a batch of
  pairs (and every source, :func:`patch_heatmaps_many`): only the last ``p`` tokens go through
  blocks ``l+1 ..``, attending to the cached FALSE prefix. Cells of the last layer at non-final
  positions, and sites whose TRUE value equals (bit for bit) the FALSE run's value there
  (self-patching before the first differing token), are ``LD_F`` without compute. The backend
  protocol has no "start at layer l" call, so this engine lives in the engine package and
  works on the HF modules of the backend's model (read-only). It is checked against
  :func:`patch_sweep` on a few sites before use (``verify``), and :func:`patch_heatmaps` falls
  back to the sweep when it does not apply (:mod:`~mechtests.methods.patching.dispatch`).

Shared pieces (the result, the readout, window checks, batching by length) are public in
:mod:`~mechtests.methods.patching.common`; this package re-exports the engines and the result.

Example:
    >>> src = true_activations(backend, true_prompts, width=14)         # doctest: +SKIP
    >>> res = patch_heatmaps(backend, false_prompts, src, (t_id, f_id))  # doctest: +SKIP
    >>> res.ld.shape, res.engine                                         # doctest: +SKIP
    (torch.Size([100, 32, 14]), 'suffix')
"""

from mechtests.engine.suffix import SuffixEngineUnavailable
from mechtests.methods.patching.common import (
    PatchResult,
    Readout,
    clean_logit_diffs,
    resid_sites,
    true_activations,
)
from mechtests.methods.patching.dispatch import ENGINES, patch_heatmaps, patch_heatmaps_many
from mechtests.methods.patching.suffix import patch_suffix, patch_suffix_many, suffix_patcher_of
from mechtests.methods.patching.sweep import patch_loop, patch_sweep

__all__ = [
    "ENGINES",
    "PatchResult",
    "Readout",
    "SuffixEngineUnavailable",
    "clean_logit_diffs",
    "patch_heatmaps",
    "patch_heatmaps_many",
    "patch_loop",
    "patch_suffix",
    "patch_suffix_many",
    "patch_sweep",
    "resid_sites",
    "suffix_patcher_of",
    "true_activations",
]
