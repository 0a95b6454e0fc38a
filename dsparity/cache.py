"""Where dsparity keeps what it derives once and reuses: fetched weights, indexers, built kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DSPARITY_CACHE`` if set, else ``~/.cache/dsparity``."""
    env = os.environ.get("DSPARITY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dsparity"
