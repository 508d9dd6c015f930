"""What split, join and receive share about the files they write: room on the disk (checked before
anything is written, and reserved), a full disk named as such, and the detached signature that
travels beside a set."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from chiron.core.fs import read_small, write_atomic
from chiron.errors import EnvironmentProblem

MAX_SIGNATURE = 64 << 10  # an SSH signature is a few hundred bytes


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


def reserve(fd: int, size: int, directory: Path, what: str) -> None:
    """Allocate the file's ``size`` bytes now, so a disk that fills up later cannot leave it half
    written; a filesystem that cannot allocate ahead is left to the checks as the bytes arrive."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise no_space(directory, size, what) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def is_no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def signature_beside(path: Path) -> Path:
    """``FILE.sig``: where chiron build writes an appliance's detached SSH signature."""
    return path.with_name(path.name + ".sig")


def copy_signature(src: Path, dest: Path) -> Path | None:
    """Copy a detached signature (small, a regular file) to ``dest`` atomically; None if there is none.

    It is carried, not checked: ``ssh-keygen -Y verify`` checks it against the joined file."""
    if not src.is_file():
        return None
    write_atomic(dest, read_small(src, MAX_SIGNATURE, "signature"))
    return dest
