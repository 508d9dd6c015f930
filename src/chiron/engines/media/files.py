"""What split, join and receive share about the files they write: room on the disk (checked before
anything is written; a disk that fills up meanwhile is caught as the bytes are written, and what
was written is removed), a full disk named as such, and the detached signature that travels beside
a set.

The space is not allocated ahead (posix_fallocate): on tmpfs that zero-fills every page before it is
written (a tenth of a second per GiB), and the check before plus the handling of ENOSPC leave
nothing half-written either way."""

from __future__ import annotations

import errno
import shutil
import stat
from pathlib import Path

from chiron.core.fs import read_small, write_atomic
from chiron.errors import EnvironmentProblem

MAX_SIGNATURE = 64 << 10  # an SSH signature is a few hundred bytes
SSH_SIGNATURE = b"-----BEGIN SSH SIGNATURE-----"


def no_space(directory: Path, needed: int, what: str) -> EnvironmentProblem:
    free = shutil.disk_usage(directory).free
    return EnvironmentProblem(
        f"not enough free space in {directory} for {what}: it needs {needed} bytes, {free} are free",
        hint="free space there (or choose another directory) and run the same command again; nothing was kept",
    )


def ensure_space(directory: Path, needed: int, what: str) -> None:
    """Refuse, before anything is written, when ``directory``'s filesystem lacks ``needed`` bytes."""
    if shutil.disk_usage(directory).free < needed:
        raise no_space(directory, needed, what)


def is_no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def signature_beside(path: Path) -> Path:
    """``FILE.sig``: where chiron build writes an appliance's detached SSH signature."""
    return path.with_name(path.name + ".sig")


def copy_signature(src: Path, dest: Path) -> Path | None:
    """Copy a detached signature to ``dest`` atomically; None if there is none.

    It is carried, not checked: ``ssh-keygen -Y verify`` checks it against the joined file. A medium
    is untrusted, so only a regular file itself (never what a symlink on it points to: that could be
    any file of this host, then written out world-readable) holding an armoured SSH signature counts."""
    try:
        if not stat.S_ISREG(src.lstat().st_mode):
            return None
    except OSError:
        return None
    data = read_small(src, MAX_SIGNATURE, "signature")  # O_NONBLOCK, bounded: a file swapped meanwhile
    if not data.startswith(SSH_SIGNATURE):
        return None
    write_atomic(dest, data)
    return dest
