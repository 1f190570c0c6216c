"""Entropy neurons: the measures of the confidence claims (``measures``)."""
