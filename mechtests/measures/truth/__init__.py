"""Truth directions, probes and steering: model visits and caches (``runs``) and the measures of
the truth claims (``measures``)."""
