"""The TransformerLens backend: the same HF model wrapped in TransformerLens 4's
``TransformerBridge`` (``backend="transformer-lens"``).

The bridge boots from the already-loaded HF model (``boot_transformers(name, hf_model=...,
tokenizer=...)``), so nothing is downloaded and the weights are the checkpoint's own. It runs
in raw mode: ``enable_compatibility_mode`` is never called, because it folds norms, centres
weights and upcasts to float32, which changes the basis of every activation and does not fit an
8B model in bf16 memory budgets. Hook names are TransformerLens's own, and our site grammar is
already TransformerLens's, so the mapping is the identity on names; the bridge resolves them
to its components (``hook_resid_pre`` -> ``blocks.L.hook_in``, ``mlp.hook_post`` ->
``blocks.L.mlp.out.hook_in``; Gemma-2's ``hook_attn_out``/``hook_mlp_out`` are the outputs of
its post-norms).

Limits, measured on transformer-lens 4.3.0 (see tests/integration/test_backend_equivalence.py):

* Booting wraps the HF model *in place* (its decoder layers become ``BlockBridge`` modules),
  so one loaded model serves one backend; this backend owns the model it is given.
* The bridge's ``hook_resid_mid`` is an alias of ``ln2.hook_in`` (the input of the pre-MLP
  norm). Reading it is exact, and this backend reads it there; but a *replacement* there changes
  only what the MLP reads, not the residual stream that continues to ``hook_resid_post``
  (``HookedTransformer`` semantics are that it does). So an *editing* hook at
  ``hook_resid_mid`` is applied instead at the bridge's ``hook_attn_out`` as
  ``fn(resid_pre + attn_out) - resid_pre`` (``resid_pre`` recorded at ``hook_resid_pre``), the
  same construction as the hooks backend; the equivalence test checks both.
* KV-cached generation is wrong out of the box with transformers 5.24: layers pass the cache to
  attention as ``cache=``, the bridge's re-implemented attention reads ``past_key_values``, so
  every decode step after the first ignores the prompt (every tiny architecture, also via
  ``bridge.generate`` and ``bridge.hf_generate``). :func:`_alias_cache_kwarg` fixes it with a
  pre-hook; the equivalence test compares generation with KV-cache-free greedy decoding.
* ``cache()`` stops early with the bridge's own ``stop_at_layer``.
* In bfloat16 the two backends agree exactly on the tiny checkpoints; on real models the
  bridge's re-implemented attention may round differently from HF's eager attention.
* Activations are the raw HF basis (no folding), so numbers match the hooks backend rather than
  a legacy ``HookedTransformer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mechtests.engine.backend import Batch, HookFn
from mechtests.engine.hf_common import Capture, HFBackendBase, SiteFns, StopAt, apply_fns
from mechtests.errors import CheckpointError
from mechtests.sites import parse_site, site_name


class BridgeBackend(HFBackendBase):
    """A TransformerLens ``TransformerBridge`` around a loaded HF causal LM."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "") -> None:
        super().__init__(model, tokenizer, name)
        self.bridge: Any = boot_bridge(model, tokenizer)

    @contextmanager
    def _installed(self, site_fns: SiteFns, stop: StopAt | None) -> Iterator[None]:
        with self.bridge.hooks(fwd_hooks=self._fwd_hooks(site_fns)):
            yield

    def _fwd_hooks(self, site_fns: SiteFns) -> list[tuple[str, Any]]:
        """TransformerLens ``fwd_hooks``; ``hook_resid_mid`` edits go through attention's
        output so that they reach the residual stream (see the module docstring)."""
        fns_by_site = {site: list(fns) for site, fns in site_fns.items()}
        edited_mid: dict[int, list[HookFn]] = {}
        for site in list(fns_by_site):
            parsed = parse_site(site, self.n_layers)
            fns = fns_by_site[site]
            if parsed.kind == "hook_resid_mid" and any(not isinstance(f, Capture) for f in fns):
                edited_mid[parsed.layer] = fns_by_site.pop(site)
        resid_pre: dict[int, torch.Tensor] = {}
        for layer, mid_fns in edited_mid.items():
            pre_site = site_name(layer, "hook_resid_pre")
            attn_site = site_name(layer, "hook_attn_out")
            fns_by_site.setdefault(pre_site, []).append(_recorder(layer, resid_pre))
            fns_by_site.setdefault(attn_site, []).append(
                _mid_editor(layer, mid_fns, resid_pre, site_name(layer, "hook_resid_mid"))
            )
        ordered = sorted(fns_by_site, key=lambda s: parse_site(s, self.n_layers))
        return [(site, _tl_hook(site, fns_by_site[site])) for site in ordered]

    def _call(self, batch: Batch, stop: StopAt | None,
              last_only: bool = False) -> torch.Tensor | None:
        # The bridge's stop_at_layer=k fires block k's hook_resid_pre, then stops.
        stop_at = None if stop is None else (stop.layer if stop.before else stop.layer + 1)
        if stop_at is not None and stop_at >= self.n_layers:
            stop_at = None
        out = self.bridge(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=self.position_ids(batch),
            return_type="logits",
            stop_at_layer=stop_at,
        )
        if stop_at is not None:
            return None
        # The bridge has no logits_to_keep: it unembeds every position, we keep the last.
        return out[:, -1:] if last_only else out  # type: ignore[no-any-return]

    def release(self) -> None:
        """Drop the bridge and the weights."""
        self.bridge = None
        super().release()


def _recorder(layer: int, slots: dict[int, torch.Tensor]) -> HookFn:
    def record(act: torch.Tensor) -> None:
        slots[layer] = act

    return record


def _mid_editor(
    layer: int, fns: list[HookFn], slots: dict[int, torch.Tensor], site: str
) -> HookFn:
    def edit(contrib: torch.Tensor) -> torch.Tensor | None:
        before = slots.pop(layer)
        current = before + contrib
        new = apply_fns(fns, current, site)
        return None if new is current else new - before

    return edit


def _tl_hook(site: str, fns: list[HookFn]) -> Any:
    def hook(tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return apply_fns(fns, tensor, site)

    return hook


def boot_bridge(model: Any, tokenizer: Any) -> Any:
    """``TransformerBridge.boot_transformers`` on a loaded model, offline, in raw mode."""
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    first = next(model.parameters())
    # The bridge sets the "transformers" logger to ERROR at import; keep the user's level.
    level = logging.getLogger("transformers").level
    try:
        bridge = TransformerBridge.boot_transformers(
            str(getattr(model.config, "_name_or_path", "") or model.config.model_type),
            hf_model=model,
            tokenizer=tokenizer,
            dtype=first.dtype,
            device=first.device,
        )
    except Exception as exc:
        raise CheckpointError(
            f"TransformerLens could not wrap this {model.config.model_type} model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); expected an "
            "architecture its TransformerBridge supports. Fix: use --mechtests-backend hf."
        ) from exc
    finally:
        logging.getLogger("transformers").setLevel(level)
    bridge.eval()
    _alias_cache_kwarg(bridge)
    return bridge


def _alias_cache_kwarg(bridge: Any) -> None:
    """Hand the bridge's attention components the KV cache under the name they read.

    transformers 5.24 passes a decoder layer's KV cache to its attention as ``cache=``
    (``past_key_values`` is deprecated); transformer-lens 4.3's re-implemented attention
    (``AttentionBridge._update_kv_cache``) reads only ``past_key_values``/``layer_past``, so
    without this every cached decode step attends to itself alone and generation diverges from
    greedy decoding after the first token (seen on every tiny architecture). The alias is a
    forward pre-hook, added only where a component updates the cache itself and only when
    ``cache`` arrives without ``past_key_values``; it lives as long as the bridge.
    """

    def alias(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = kwargs["cache"]
            return args, kwargs
        return None

    for module in bridge.modules():
        if callable(getattr(module, "_update_kv_cache", None)):
            module.register_forward_pre_hook(alias, with_kwargs=True)
