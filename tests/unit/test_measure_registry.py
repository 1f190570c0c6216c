"""The claim table and the measure registry match both ways: a claim's id names its measure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mechtests.claims.table import load_claims
from mechtests.errors import ConfigError
from mechtests.measures import check_measures, get_measure, measure, registered_measures

CLAIM_IDS = [claim.id for claim in load_claims()]


def test_every_claim_has_a_measure_and_every_measure_a_claim() -> None:
    check_measures(CLAIM_IDS)
    assert sorted(registered_measures()) == CLAIM_IDS


def test_a_claim_without_a_measure_is_a_config_error_that_names_it() -> None:
    with pytest.raises(ConfigError, match=r"claims truth\.direction\.new_claim have no measure"
                                          r".*Fix: add @measure"):
        check_measures([*CLAIM_IDS, "truth.direction.new_claim"])


def test_a_measure_without_a_claim_is_a_config_error_that_names_it() -> None:
    with pytest.raises(ConfigError, match=r"measures truth\.direction\.cosine are registered "
                                          r"for no claim.*Fix:"):
        check_measures([c for c in CLAIM_IDS if c != "truth.direction.cosine"])


def test_two_claims_that_differ_only_in_params_share_one_measure() -> None:
    forward = get_measure("truth.steering.forward_ratio")
    assert get_measure("truth.steering.backward_ratio") is forward


def test_a_second_function_for_a_claim_id_is_a_config_error() -> None:
    registered_measures()
    with pytest.raises(ConfigError, match=r"two measures are registered for claim "
                                          r"'truth\.direction\.cosine'"):
        measure("truth.direction.cosine")(lambda ctx, claim, pair: get_measure(claim.id)(
            ctx, claim, pair))


def test_an_unknown_claim_id_is_a_config_error_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"claim 'truth\.nothing\.here' has no measure; known: "):
        get_measure("truth.nothing.here")


def test_a_claim_entry_with_a_measure_key_is_rejected_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "truth.yaml").write_text(
        "- id: truth.direction.cosine\n  area: truth\n  statement: s\n  paper: p\n"
        "  metric: m\n  control: c\n  measure: truth.direction_cosine\n")
    with pytest.raises(ConfigError, match=r"has a 'measure' key.*Fix: remove the key"):
        load_claims(tmp_path)


def test_the_measures_import_no_report_module() -> None:
    code = ("import sys; from mechtests.measures import registered_measures; "
            "registered_measures(); "
            "print(sorted(m for m in sys.modules if m.startswith('mechtests.report')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.stdout.strip() == "[]", out.stdout[-2000:] + out.stderr[-2000:]
