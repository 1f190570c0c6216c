"""The suffix engine's protocols and error (see :mod:`mechtests.engine.suffix`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from mechtests.errors import MechTestsError

__all__ = ["OffersSuffixPatcher", "SuffixEngineUnavailable", "SuffixPatcher"]


class SuffixEngineUnavailable(MechTestsError):
    """The backend's model is not one the suffix engine supports (the sweep is used instead)."""


class SuffixPatcher(Protocol):
    """Patching heatmaps of equal-length FALSE prompts by suffix re-runs
    (:mod:`mechtests.engine.suffix`)."""

    def patch(
        self,
        false_ids: torch.Tensor,
        sources: Sequence[Sequence[torch.Tensor]],
        rows: torch.Tensor,
        widths: Sequence[int],
        readout: tuple[int, int],
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Patch each source into the FALSE prompts ``false_ids [n, T]`` (one token length,
        no padding).

        ``sources[s][l]`` is ``[pair, W, d]``: source ``s``'s TRUE activation after block ``l``
        at the last ``W`` positions; ``rows [n]`` picks the pairs of ``false_ids`` along its
        pair axis. ``widths[i]`` (``1 .. W``) is the window of ``false_ids[i]``: its first
        ``W - widths[i]`` columns stay NaN. ``readout`` is the token ids of ``LD =
        logit(t) - logit(f)``. Returns ``([ld [n, layer, W] per source], ld_false [n])``,
        float64 on CPU, ``ld_false`` the unpatched FALSE ``LD``.
        """
        ...


@runtime_checkable
class OffersSuffixPatcher(Protocol):
    """A backend that may offer the suffix engine for its model."""

    def suffix_patcher(self) -> SuffixPatcher:
        """The patcher for this backend's model; :class:`SuffixEngineUnavailable` (with the
        reason) when the engine does not cover it."""
        ...
