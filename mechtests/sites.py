"""Hook-site names: the TransformerLens grammar, checked in one place.

Supported sites (``L`` is a 0-based block index)::

    blocks.L.hook_resid_pre    input of block L           (HF hidden_states[L])
    blocks.L.hook_resid_mid    after attention, before the MLP
    blocks.L.hook_resid_post   output of block L          (HF hidden_states[L + 1])
    blocks.L.hook_attn_out     attention's contribution to the residual stream
    blocks.L.hook_mlp_out      the MLP's contribution to the residual stream
    blocks.L.mlp.hook_post     MLP activations (input of the down projection)

Example:
    >>> parse_site("blocks.3.hook_resid_post")
    Site(layer=3, kind='hook_resid_post')
    >>> site_name(3, "hook_resid_post")
    'blocks.3.hook_resid_post'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mechtests.errors import SiteError

SITE_KINDS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "mlp.hook_post",
)
_SITE_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in SITE_KINDS) + r")$")


@dataclass(frozen=True, order=True)
class Site:
    """A parsed site name."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"


def parse_site(name: str, n_layers: int | None = None) -> Site:
    """Parse ``name``; raise :class:`SiteError` with the grammar when it does not match."""
    match = _SITE_RE.match(name)
    if match is None:
        raise SiteError(
            f"site {name!r} is not in the TransformerLens grammar; expected "
            f"'blocks.<layer>.<kind>' with kind one of {', '.join(SITE_KINDS)}. "
            "Fix: e.g. 'blocks.5.hook_resid_post'."
        )
    site = Site(int(match.group(1)), match.group(2))
    if n_layers is not None and not 0 <= site.layer < n_layers:
        raise SiteError(
            f"site {name!r} names layer {site.layer}, but the model has {n_layers} layers "
            f"(0..{n_layers - 1}). Fix: pick a layer in that range in the family's settings."
        )
    return site


def site_name(layer: int, kind: str) -> str:
    """Build a site name, validating ``kind``."""
    return parse_site(f"blocks.{layer}.{kind}").name
