"""The hooks backend: plain PyTorch forward hooks on an unmodified HuggingFace model.

Each site of :mod:`mechtests.sites` maps to one hook on one module of a decoder layer (module
paths from :mod:`mechtests.engine.archs`):

==========================  ===============================================================
``hook_resid_pre``          forward pre-hook on the layer (``hidden_states``, positional or
                            keyword)
``hook_attn_out``           forward hook on the attention-contribution module (output or
                            ``output[0]``)
``hook_resid_mid``          same module: ``resid_pre + contrib``; a replacement ``r`` is
                            written back as the contribution ``r - resid_pre``, so it
                            reaches the residual stream (and the MLP's input)
``mlp.hook_post``           forward pre-hook on the down projection (its input)
``hook_mlp_out``            forward hook on the MLP-contribution module
``hook_resid_post``         forward hook on the layer (its output, tensor or tuple)
==========================  ===============================================================

Hooks are registered in that order within a layer, so an edit at an earlier site is seen by
every later one, and they are always removed in a ``finally``. ``cache()`` ends the forward by
raising :class:`~mechtests.engine.hf_common.StopForward` from a hook after the last layer it
needs, so caching layer 2 of an 8B model costs three layers. This is the method of
``refusal_direction``'s ``add_hooks`` and TransformerLens's ``hook_resid_*`` names, applied to
the raw HF modules (no weight folding).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from mechtests.engine.backend import Batch, Hook
from mechtests.engine.hf_common import (
    HFBackendBase,
    SiteFns,
    StopAt,
    StopForward,
    apply_fns,
    full_attention,
    submodule,
)
from mechtests.sites import SITE_KINDS, parse_site

_ORDER = {kind: i for i, kind in enumerate(
    ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
     "hook_resid_post")
)}
assert set(_ORDER) == set(SITE_KINDS)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[no-any-return]


def _with_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def window_covers(config: Any, length: int) -> bool:
    """Whether every layer of ``config`` attends to all of ``length`` tokens: full attention
    everywhere, or a sliding window longer than the sequence. Then the window never cuts a key
    and HF's sliding-layer cache keeps (and crops) every position like a full one; Gemma-3's
    window of 512 covers every prompt of the claim suite."""
    if full_attention(config):
        return True
    window = getattr(config, "sliding_window", None)
    return isinstance(window, int) and length < window


def _registration_order(site: str) -> tuple[int, int]:
    parsed = parse_site(site)
    return parsed.layer, _ORDER[parsed.kind]


class HooksBackend(HFBackendBase):
    """A loaded HF causal LM with hooks at TransformerLens-named sites (see module docstring)."""

    def _layer(self, index: int) -> torch.nn.Module:
        layers = submodule(self.model, self.spec.layers)
        return layers[index]  # type: ignore[index,no-any-return]

    @contextmanager
    def _installed(self, site_fns: SiteFns, stop: StopAt | None) -> Iterator[None]:
        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            resid_pre: dict[int, torch.Tensor] = {}
            ordered = sorted(site_fns, key=_registration_order)
            for site in ordered:
                parsed = parse_site(site, self.n_layers)
                handles.extend(self._register(parsed.layer, parsed.kind, site, site_fns[site],
                                              resid_pre))
            if stop is not None:
                handles.append(self._register_stop(stop))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _register(
        self, layer: int, kind: str, site: str, fns: list[Any], resid_pre: dict[int, torch.Tensor]
    ) -> list[torch.utils.hooks.RemovableHandle]:
        block = self._layer(layer)
        if kind == "hook_resid_pre":
            def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if args:
                    return (apply_fns(fns, args[0], site), *args[1:]), kwargs
                kwargs["hidden_states"] = apply_fns(fns, kwargs["hidden_states"], site)
                return args, kwargs
            return [block.register_forward_pre_hook(pre, with_kwargs=True)]
        if kind == "hook_resid_mid":
            def record(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                resid_pre[layer] = args[0] if args else kwargs["hidden_states"]

            def mid(_m: Any, _args: Any, output: Any) -> Any:
                before = resid_pre.pop(layer)
                contrib = _first(output)
                current = before + contrib
                new = apply_fns(fns, current, site)
                return None if new is current else _with_first(output, new - before)
            return [
                block.register_forward_pre_hook(record, with_kwargs=True),
                submodule(block, self.spec.attn_contrib).register_forward_hook(mid),
            ]
        if kind == "mlp.hook_post":
            def down_in(_m: Any, args: tuple[Any, ...]) -> Any:
                return (apply_fns(fns, args[0], site), *args[1:])
            return [submodule(block, self.spec.mlp_down).register_forward_pre_hook(down_in)]
        module = {
            "hook_attn_out": submodule(block, self.spec.attn_contrib),
            "hook_mlp_out": submodule(block, self.spec.mlp_contrib),
            "hook_resid_post": block,
        }[kind]

        def out(_m: Any, _args: Any, output: Any) -> Any:
            act = _first(output)
            new = apply_fns(fns, act, site)
            return None if new is act else _with_first(output, new)
        return [module.register_forward_hook(out)]

    def _register_stop(self, stop: StopAt) -> torch.utils.hooks.RemovableHandle:
        """Registered last, so it runs after every site hook on the same block."""

        def end(*_: Any) -> None:
            raise StopForward

        block = self._layer(stop.layer)
        if stop.before:
            return block.register_forward_pre_hook(end)
        return block.register_forward_hook(end)

    def forward_variants(self, batch: Batch, variants: Sequence[Sequence[Hook]],
                         suffix: int) -> list[torch.Tensor]:
        """:meth:`HFBackendBase.forward_variants` with the prefix run once: the positions
        before the last ``suffix`` go through the model without hooks, keeping their keys and
        values; each variant then runs only the last ``suffix`` tokens with its hooks (which
        see ``[batch, suffix, d]``, so negative positions index as in a full forward) and the
        cache is cut back to the prefix. Models whose sliding window is shorter than the batch
        take the plain path (:func:`window_covers`).
        """
        length = int(batch.input_ids.shape[1])
        if not 0 < suffix < length or not window_covers(self.model.config, length) \
                or not variants:
            return super().forward_variants(batch, variants, suffix)
        pos = self.position_ids(batch)
        cut = length - suffix
        out: list[torch.Tensor] = []
        # transformers 5 renamed past_key_values to cache (argument and output)
        kwarg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        with torch.no_grad():
            first = self.model(input_ids=batch.input_ids[:, :cut],
                               attention_mask=batch.attention_mask[:, :cut],
                               position_ids=pos[:, :cut], use_cache=True,
                               logits_to_keep=1)  # its logits are not read
            cache = getattr(first, "cache", None) or first.past_key_values
            for hooks in variants:
                with self._installed(self._site_fns(hooks), None):
                    logits = self.model(input_ids=batch.input_ids[:, cut:],
                                        attention_mask=batch.attention_mask,
                                        position_ids=pos[:, cut:], use_cache=True,
                                        logits_to_keep=1, **{kwarg: cache}).logits
                cache.crop(-suffix)  # back to the prefix (negative: tokens to drop)
                out.append(logits[:, -1].float())
        return out

    def _call(self, batch: Batch, stop: StopAt | None,
              last_only: bool = False) -> torch.Tensor | None:
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=self.position_ids(batch),
            use_cache=False,
            logits_to_keep=1 if last_only else 0,
        )
        return out.logits  # type: ignore[no-any-return]
