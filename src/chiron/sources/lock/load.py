"""The lock a build or refresh uses: given, named by the spec, or resolved now."""

from __future__ import annotations

from pathlib import Path

from chiron.core.spec import LoadedSpec
from chiron.sources.lock.model import Lock
from chiron.sources.lock.pylock import check_fits, read_pylock
from chiron.sources.lock.resolve import resolve


def load_lock(loaded: LoadedSpec, override: Path | None = None) -> Lock:
    """The given lock, else the spec's lock file if it names one, else a fresh resolution."""
    path = override or loaded.lock_path
    if path is not None:
        lock = read_pylock(path, loaded.spec)
        check_fits(lock, loaded.spec, str(path))
        return lock
    return resolve(loaded.spec, loaded.base)
