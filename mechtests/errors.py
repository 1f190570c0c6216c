"""One error hierarchy for mechtests.

Every message is one line that says what was wrong, what was expected, and the fix::

    MechTestsError
    ├── ConfigError            bad families / thresholds / claims data (names file, key, fix)
    │   └── UnknownFamilyError unknown --model-family (lists the valid ones)
    ├── CheckpointError        a checkpoint reference that does not resolve offline
    ├── SiteError              a hook site outside the TransformerLens grammar, or unsupported
    ├── DatasetError           a dataset file that is missing or malformed
    ├── CacheError             an activation-cache entry that cannot be written
    └── GateError              an organism that failed its behaviour gates after every seed

The pytest plugin turns ``ConfigError`` raised while parsing options into
``pytest.UsageError`` so that a typo stops the run before any model is loaded.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "GateError",
    "MechTestsError",
    "SiteError",
    "UnknownFamilyError",
]


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
    """The activation cache cannot be written."""


class GateError(MechTestsError):
    """A trained organism failed its behaviour gates on every seed tried."""
