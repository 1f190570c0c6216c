"""Where the suite keeps what it builds and measures (activations, conversions, mutants)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MECHTESTS_CACHE"


def default_cache_dir() -> Path:
    """``$MECHTESTS_CACHE`` or the user cache directory (``~/.cache/mechtests`` on Linux)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mechtests"))
