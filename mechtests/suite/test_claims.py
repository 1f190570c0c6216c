"""One generic test: every claim of the table, on every selected family and model pair.

The parametrization (``claim_case``) and the ``check_claim`` fixture come from the mechtests
plugin; thresholds, sources and expected failures come from ``thresholds.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable

from mechtests.measures.runner import ClaimCase


def test_claim_holds(claim_case: ClaimCase, check_claim: Callable[[ClaimCase], None]) -> None:
    """The claim's metric clears its threshold and beats its control."""
    check_claim(claim_case)
