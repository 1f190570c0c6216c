"""Claims as data: the claim table, thresholds with provenance, and verdicts."""

from mechtests.claims.model import Claim, Judgement, Measurement, ThresholdSpec, Verdict

__all__ = ["Claim", "Judgement", "Measurement", "ThresholdSpec", "Verdict"]
