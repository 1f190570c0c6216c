"""One error hierarchy for mechtests.

Every message is one line that says what was wrong, what was expected, and the fix::

    MechTestsError
    ├── ConfigError            bad families / thresholds / claims data (names file, key, fix)
    │   └── UnknownFamilyError unknown --model-family (lists the valid ones)
    ├── CheckpointError        a checkpoint reference that does not resolve offline
    ├── SiteError              a hook site outside the TransformerLens grammar, or unsupported
    ├── DatasetError           a dataset file that is missing or malformed
    ├── CacheError             a cache entry that cannot be written, or a result that is not
    │                          finite / complete (a cell ERROR with the cause, never a metric)
    ├── PreflightError         an input that cannot give a meaningful number (checked once per
    │                          run, before any model loads: mechtests.preflight)
    └── GateError              an organism that failed its behaviour gates after every seed

The pytest plugin turns ``ConfigError`` and ``PreflightError`` into ``pytest.UsageError``, so a
bad input stops the run with one line and exit code :data:`EXIT_CONFIG` before any model loads.

Exit codes of a claim run (``mechtests run`` / ``pytest --pyargs mechtests.suite``):
:data:`EXIT_OK` every claim held; :data:`EXIT_CLAIM_FAILED` a claim failed (a finding about the
models) or a cell ended in ERROR; :data:`EXIT_INTERRUPTED` the run was stopped (Ctrl-C);
:data:`EXIT_CONFIG` a configuration error (nothing was measured); :data:`EXIT_DRIFT` every claim
held but a number moved from the ``--baseline`` beyond its tolerance (or is new there).
"""

from __future__ import annotations

__all__ = [
    "EXIT_CLAIM_FAILED",
    "EXIT_CONFIG",
    "EXIT_DRIFT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "GateError",
    "MechTestsError",
    "PreflightError",
    "SiteError",
    "UnknownFamilyError",
]


EXIT_OK = 0
EXIT_CLAIM_FAILED = 1  # pytest's TESTS_FAILED
EXIT_INTERRUPTED = 2  # pytest's INTERRUPTED
EXIT_CONFIG = 4  # pytest's USAGE_ERROR
EXIT_DRIFT = 6  # beyond pytest's own codes (0-5), so CI can tell drift from a failed claim


class MechTestsError(Exception):
    """Base class of every error mechtests raises on purpose."""


class ConfigError(MechTestsError):
    """A data file (families, thresholds, claims) or an option has a bad value."""


class UnknownFamilyError(ConfigError):
    """``--model-family`` names a family that is not defined."""


class CheckpointError(MechTestsError):
    """A checkpoint reference does not resolve to a loadable local directory."""


class SiteError(MechTestsError):
    """A hook site name is malformed or not supported by the backend."""


class DatasetError(MechTestsError):
    """A dataset file is missing or does not have the expected columns."""


class CacheError(MechTestsError):
    """A cache entry cannot be written, or a computed result is not finite or complete."""


class PreflightError(MechTestsError):
    """An input (checkpoint, pair, dataset, option, environment) fails the run's preflight."""


class GateError(MechTestsError):
    """A trained organism failed its behaviour gates on every seed tried."""
