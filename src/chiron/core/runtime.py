"""Facts about the running process: the appliance it runs from, if any."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def self_archive() -> Path | None:
    """The appliance this process runs from, if any (pex sets PEX; shiv runs with argv[0] the file)."""
    pex = os.environ.get("PEX")
    if pex and Path(pex).is_file():
        return Path(pex).resolve()
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.is_file() and _is_zip(argv0):
        return argv0.resolve()
    return None


def _is_zip(path: Path) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False
