"""Where orchestr caches what it builds or fetches (models, compiled kernels), and how a cached
folder is built once among concurrent processes: a leaf module, so the loader, the OpenVINO
exporter and the native kernels can all use it without importing each other."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Written last into a finished cache folder: a folder without it is an interrupted build.
COMPLETE_MARKER = ".orchestr-complete"


def cache_dir() -> Path:
    """Root of orchestr's cache (``ORCHESTR_CACHE_DIR`` or ``~/.cache/orchestr``)."""
    root = os.environ.get("ORCHESTR_CACHE_DIR") or "~/.cache/orchestr"
    return Path(root).expanduser()


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def build_once(target: Path, build: Callable[[Path], None], source: str, lock_timeout: float,
               announce: str) -> Path:
    """``target``, built by ``build(folder)`` unless it is already complete; safe with concurrent
    processes: one builds under a file lock into a temporary folder that is renamed into place,
    the others wait on the lock and then find the folder. ``announce`` is logged before a build;
    ``source`` is written into the completion marker."""
    from filelock import FileLock

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{target.name}.lock"), timeout=lock_timeout):
        if is_complete(target):  # another process finished meanwhile
            return target
        log.info("%s", announce)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any other
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text(f"{source}\n")
            if target.exists():  # an incomplete leftover from a killed build
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
