"""Where orchestr caches what it builds or fetches (models, compiled kernels): a leaf module, so
the loader and the native kernels can both use it without importing each other."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of orchestr's cache (``ORCHESTR_CACHE_DIR`` or ``~/.cache/orchestr``)."""
    root = os.environ.get("ORCHESTR_CACHE_DIR") or "~/.cache/orchestr"
    return Path(root).expanduser()
