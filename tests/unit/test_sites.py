"""The site grammar (mechtests.sites): TransformerLens names, checked in one place."""

from __future__ import annotations

import pytest

from mechtests.errors import SiteError
from mechtests.sites import SITE_KINDS, Site, parse_site, site_name


@pytest.mark.parametrize("kind", SITE_KINDS)
def test_every_kind_parses_and_round_trips(kind: str) -> None:
    name = f"blocks.7.{kind}"
    site = parse_site(name)
    assert site == Site(7, kind)
    assert site.name == name
    assert site_name(7, kind) == name


@pytest.mark.parametrize(
    "name",
    [
        "blocks.3.hook_resid",  # unknown kind
        "blocks.x.hook_resid_pre",  # non-numeric layer
        "blocks.-1.hook_resid_pre",  # negative layer
        "block.3.hook_resid_pre",  # wrong prefix
        "blocks.3.hook_resid_pre ",  # trailing space
        "blocks.3.attn.hook_z",  # a TransformerLens name we do not support
        "resid_pre3",  # TransformerLens shorthand is not accepted
        "",
    ],
)
def test_malformed_names_raise_site_error_with_the_grammar(name: str) -> None:
    with pytest.raises(SiteError, match=r"blocks\.<layer>\.<kind>"):
        parse_site(name)


def test_layer_outside_the_model_raises_site_error_naming_the_range() -> None:
    with pytest.raises(SiteError, match=r"0\.\.3"):
        parse_site("blocks.4.hook_resid_post", n_layers=4)
    assert parse_site("blocks.3.hook_resid_post", n_layers=4).layer == 3


def test_site_name_rejects_an_unknown_kind() -> None:
    with pytest.raises(SiteError):
        site_name(0, "hook_resid")


def test_sites_sort_by_layer_then_kind() -> None:
    sites = sorted(
        [Site(2, "hook_resid_pre"), Site(0, "hook_resid_post"), Site(0, "hook_attn_out")]
    )
    assert [s.name for s in sites] == [
        "blocks.0.hook_attn_out", "blocks.0.hook_resid_post", "blocks.2.hook_resid_pre",
    ]
