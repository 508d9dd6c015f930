"""An exclusive advisory lock on a file (flock), naming its holder, for the host and the mirror store."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from chiron.errors import Refused, UsageError

_REMOVE = "remove it, then run again"


@contextlib.contextmanager
def hold(
    path: Path, op: str, wait: float = 0.0, hint: str = "wait for it to finish, or pass --wait SECONDS"
) -> Iterator[None]:
    """Hold ``path``'s lock for ``op``; wait up to ``wait`` seconds, then refuse naming the holder.

    flock is released by the kernel when the holder dies (even by SIGKILL), so a crashed run never
    leaves the lock stuck; the text in the file only says who holds it.
    """
    # Never through a link or into a FIFO or device planted where the lock goes: the lock file is
    # truncated and written below.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UsageError(f"{path}: is a symbolic link, not chiron's lock file", hint=_REMOVE) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path}: is not a regular file, not chiron's lock file", hint=_REMOVE)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
                    raise Refused(f"another chiron operation holds {path} ({holder})", hint=hint) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.pwrite(fd, f"pid {os.getpid()}, {op} since {since}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
