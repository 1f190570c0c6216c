"""Refusal directions and interventions: model visits and caches (``runs``), the Arditi-style
site sweep (``select``), the calibration rule (``calibrate``) and the measures of the refusal
claims (``measures``)."""
