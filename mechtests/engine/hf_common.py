"""What both backends share: a HuggingFace causal LM, its tokenizer, and the Backend protocol's
model-independent half (tokenizing, caching at positions, greedy generation, readout weights).

A concrete backend supplies two things: :meth:`HFBackendBase._installed`, a context manager
that activates hook functions (per site, applied in order) for the duration of a forward, and
:meth:`HFBackendBase._call`, one forward of a batch that may stop early (:class:`StopAt`).
Everything else, including the conventions of :mod:`mechtests.engine.backend`, lives here once.

Positions: left padding plus position ids derived from the attention mask (as HF ``generate``
does) make every real token's activations independent of how much padding its batch needs,
and make ``-1`` the last real token of every prompt.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mechtests.engine.archs import ArchSpec
from mechtests.engine.backend import Batch, Hook, HookFn, ReadoutWeights
from mechtests.engine.layout import spec_for_model
from mechtests.errors import ConfigError, SiteError
from mechtests.phases import timed_phase
from mechtests.sites import Site, parse_site

if TYPE_CHECKING:
    from mechtests.engine.suffix import SuffixPatcher

SiteFns = dict[str, list[HookFn]]
COLLECT_BYTES = 64 << 20  # release(): full gc.collect from this weight size up
"""Site name -> hook functions to apply there, in order (user hooks first, captures last)."""


class StopForward(Exception):
    """Raised from a hook to end a forward early once every needed site has been seen."""


@dataclass(frozen=True)
class StopAt:
    """Where ``cache()`` may end the forward: before block ``layer`` runs (when only its
    ``hook_resid_pre`` is needed) or right after it."""

    layer: int
    before: bool

    @classmethod
    def for_sites(cls, sites: Sequence[Site]) -> StopAt:
        layer = max(site.layer for site in sites)
        kinds = {site.kind for site in sites if site.layer == layer}
        return cls(layer, kinds == {"hook_resid_pre"})


def apply_fns(fns: Sequence[HookFn], act: torch.Tensor, site: str) -> torch.Tensor:
    """Run ``fns`` on ``act`` in order; each may return a replacement of the same shape."""
    for fn in fns:
        new = fn(act)
        if new is None:
            continue
        if new.shape != act.shape:
            raise SiteError(
                f"hook at {site} returned shape {tuple(new.shape)}, expected {tuple(act.shape)} "
                "(the activation's shape). Fix: return a tensor of the same shape, or None."
            )
        act = new.to(dtype=act.dtype, device=act.device)
    return act


def full_attention(config: Any) -> bool:
    """Whether every layer of an HF config attends to all previous positions (no sliding
    window: ``layer_types`` all ``full_attention`` and no ``use_sliding_window``)."""
    layer_types = getattr(config, "layer_types", None) or ()
    return not getattr(config, "use_sliding_window", False) and all(
        t == "full_attention" for t in layer_types)


def submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """``root``'s submodule at dotted ``path``."""
    return root.get_submodule(path)


class HFBackendBase:
    """One HF causal LM and its tokenizer behind the :class:`~mechtests.engine.backend.Backend`
    protocol. Subclasses provide :meth:`_installed` and :meth:`_call`."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "") -> None:
        self.model: Any = model
        self.tokenizer: Any = tokenizer
        self.name = name
        config = model.config
        self.spec: ArchSpec = spec_for_model(model)
        self.n_layers = int(config.num_hidden_layers)
        self.d_model = int(config.hidden_size)
        first = next(model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype

    # -- to implement ------------------------------------------------------------------------
    def _installed(self, site_fns: SiteFns, stop: StopAt | None) -> AbstractContextManager[None]:
        """Activate ``site_fns`` (a backend may also use ``stop`` to end the forward by raising
        :class:`StopForward`)."""
        raise NotImplementedError

    def _call(self, batch: Batch, stop: StopAt | None,
              last_only: bool = False) -> torch.Tensor | None:
        """One forward of ``batch``; logits (of the last position only with ``last_only``),
        or None when stopped early."""
        raise NotImplementedError

    def _generation_model(self) -> Any:
        """The module whose ``generate`` runs with :meth:`_installed` hooks active."""
        return self.model

    # -- protocol ----------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], add_special_tokens: bool = True) -> Batch:
        """Tokenize with left padding onto the model's device."""
        if isinstance(prompts, str):
            raise TypeError("tokenize() takes a sequence of prompts, not one string")
        enc = self.tokenizer(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
        )
        return Batch(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    @staticmethod
    def position_ids(batch: Batch) -> torch.Tensor:
        """Positions counted over real tokens only (HF ``generate``'s convention)."""
        mask = batch.attention_mask.long()
        return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)

    def forward(self, batch: Batch, hooks: Sequence[Hook] = (),
                last_only: bool = False) -> torch.Tensor:
        """Run ``batch`` with ``hooks`` active; float32 logits [batch, pos, vocab] or, with
        ``last_only``, [batch, 1, vocab]."""
        with torch.no_grad(), self._installed(self._site_fns(hooks), None):
            logits = self._call(batch, None, last_only)
        assert logits is not None
        return logits.float()

    def forward_variants(self, batch: Batch, variants: Sequence[Sequence[Hook]],
                         suffix: int) -> list[torch.Tensor]:
        """Last-position float32 logits ``[batch, vocab]`` of ``batch`` under each hook set of
        ``variants``. Every hook may change only the last ``suffix`` positions (the caller's
        promise), so a backend may run the positions before them once (the hooks backend does,
        with a KV cache); here each variant is a whole forward."""
        return [self.forward(batch, hooks, last_only=True)[:, -1] for hooks in variants]

    def cache(
        self,
        batch: Batch,
        sites: Sequence[str],
        positions: Sequence[int] | None = None,
        hooks: Sequence[Hook] = (),
    ) -> dict[str, torch.Tensor]:
        """Activations at ``sites`` (float32, CPU), ``[batch, len(positions), d]`` or, with
        ``positions=None``, ``[batch, pos, d]``; the forward stops after the last layer needed.
        A site's value is recorded after any of ``hooks`` at that same site has edited it."""
        if not sites:
            return {}
        parsed = [parse_site(s, self.n_layers) for s in sites]
        index = self._position_index(batch, positions)
        store: dict[str, torch.Tensor] = {}
        site_fns = self._site_fns(hooks)
        for site in dict.fromkeys(sites):
            site_fns.setdefault(site, []).append(Capture(site, index, store))
        stop = StopAt.for_sites(parsed)
        with torch.no_grad(), self._installed(site_fns, stop):
            try:
                self._call(batch, stop)
            except StopForward:
                pass
        missing = [s for s in sites if s not in store]
        if missing:
            raise SiteError(
                f"sites {missing} never fired during the forward of {self.name or 'the model'}. "
                "Fix: this is a bug in the backend's site table (mechtests/engine/archs.py)."
            )
        return {s: store[s] for s in sites}

    @timed_phase("generation", items=lambda call, _texts: len(call.arg("prompts")))
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 16,
        hooks: Sequence[Hook] = (),
        batch_size: int = 32,
    ) -> list[str]:
        """Greedy decoding with ``hooks`` active on every step (prompt and generated tokens),
        KV cache and left padding; returns only the new text, special tokens skipped."""
        from transformers import GenerationConfig

        model = self._generation_model()
        eos = model.generation_config.eos_token_id
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=eos if eos is not None else self.tokenizer.eos_token_id,
        )
        texts: list[str] = []
        for chunk in chunks(prompts, batch_size):
            batch = self.tokenize(chunk)
            with torch.no_grad(), self._installed(self._site_fns(hooks), None):
                out = model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    generation_config=config,
                )
            new = out[:, batch.input_ids.shape[1] :]
            texts.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts

    @timed_phase("entropy neurons")
    def readout_weights(self) -> ReadoutWeights:
        """Unembedding, final-norm gain (Gemma's ``1 + w`` applied), its bias, and the last
        block's down projection, as float32 CPU copies in the raw HF basis."""
        model = self._generation_model()
        norm = submodule(model, self.spec.final_norm)
        layers = submodule(model, self.spec.layers)
        last = layers[self.n_layers - 1]  # type: ignore[index]
        down = _linear_weight(submodule(_unwrap(last), self.spec.mlp_down))
        bias = getattr(norm, "bias", None)
        return ReadoutWeights(
            unembed=_linear_weight(submodule(model, self.spec.unembed)).detach().float().cpu(),
            final_norm_weight=(_norm_weight(norm).detach().float() + self.spec.norm_offset).cpu(),
            final_norm_bias=None if bias is None else bias.detach().float().cpu(),
            mlp_out=down.detach().float().cpu(),
            norm_kind=self.spec.norm_kind,
        )

    def token_id(self, text: str) -> int:
        """The last id of ``tokenizer(text, add_special_tokens=False)`` (paper convention)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(
                f"{text!r} tokenizes to no tokens with {self.name or 'this tokenizer'}. Fix: "
                "use a non-empty readout string (e.g. ' TRUE')."
            )
        return int(ids[-1])

    def suffix_patcher(self) -> SuffixPatcher:
        """The suffix patching engine on this model (:mod:`mechtests.engine.suffix`), or
        :class:`~mechtests.engine.suffix.SuffixEngineUnavailable` saying why it does not cover
        the model."""
        from mechtests.engine.suffix import hf_suffix_patcher

        return hf_suffix_patcher(self.model)

    def release(self) -> None:
        """Drop the weights (and GPU memory) so another model can load. A full garbage
        collection (for weights held by reference cycles) runs for models on an accelerator or
        of at least :data:`COLLECT_BYTES`; for smaller CPU models it costs more than it frees
        (about 0.25 s per switch, 24 switches per organism matrix)."""
        model, self.model = self.model, None
        if model is None:
            return
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        if self.device.type != "cpu" or nbytes >= COLLECT_BYTES:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- helpers -----------------------------------------------------------------------------
    def _site_fns(self, hooks: Sequence[Hook]) -> SiteFns:
        site_fns: SiteFns = {}
        for site, fn in hooks:
            parse_site(site, self.n_layers)
            site_fns.setdefault(site, []).append(fn)
        return site_fns

    @staticmethod
    def _position_index(batch: Batch, positions: Sequence[int] | None) -> torch.Tensor | None:
        if positions is None:
            return None
        length = int(batch.input_ids.shape[1])
        bad = [p for p in positions if not -length <= p < length]
        if bad:
            raise ConfigError(
                f"positions {bad} are outside prompts of {length} tokens (valid: -{length}.."
                f"{length - 1}; negative counts from the end). Fix: use negative positions "
                "such as -1 for the last token."
            )
        return torch.tensor([p % length for p in positions], device=batch.input_ids.device)


class Capture:
    """A hook function that records its site's activation (at ``index`` positions) and
    returns None; backends can tell it apart from a user's editing hook."""

    def __init__(self, site: str, index: torch.Tensor | None, store: dict[str, torch.Tensor]):
        self.site = site
        self.index = index
        self.store = store

    def __call__(self, act: torch.Tensor) -> None:
        picked = act if self.index is None else act.index_select(1, self.index.to(act.device))
        self.store[self.site] = picked.detach().float().cpu()


def _unwrap(module: Any) -> Any:
    """The HF module behind a TransformerBridge component (itself otherwise)."""
    original = getattr(module, "original_component", None)
    return original if isinstance(original, torch.nn.Module) else module


def _linear_weight(module: Any) -> torch.Tensor:
    weight = getattr(_unwrap(module), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise SiteError(f"module {type(module).__name__} has no weight tensor")
    return weight


def _norm_weight(module: Any) -> torch.Tensor:
    return _linear_weight(module)


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
