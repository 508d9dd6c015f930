"""File helpers every layer uses: atomic and private writes, fsync of a directory, hashing, copying
a byte range while hashing it.

Temporary files are made beside their destination with unpredictable names, O_EXCL and mode 0600
(``tempfile.mkstemp``), so a planted file or symlink with a guessable name can neither receive the
data nor widen its mode; the final mode is set on the descriptor before the rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from chiron.errors import VerificationError

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_beside(path: Path, mode: int = 0o644) -> Iterator[tuple[int, Path]]:
    """A new temporary file in ``path``'s directory: (fd, name). The caller writes it and renames it
    over ``path``; on an exception it is removed. The descriptor is closed on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        yield fd, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    with temp_beside(path, mode) as (fd, tmp):
        _write_all(fd, data)
        os.fsync(fd)
        os.replace(tmp, path)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 from the start (never readable by others, even briefly)."""
    write_atomic(path, data, mode=0o600)


def copy_range(src_fd: int, offset: int, length: int, dest: Path, sha256: str | None, prefix: bytes = b"") -> bool:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to ``dest`` (after ``prefix``), hashing them.

    The bytes go to a temporary sibling first; ``dest`` appears (atomically) only when all of them
    were read and, if ``sha256`` is given, match it. Returns False, leaving nothing, otherwise.
    """
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK, max(length, 1)))
    with temp_beside(dest, 0o644) as (fd, tmp):
        _write_all(fd, prefix)
        pos, end = offset, offset + length
        while pos < end:
            n = os.preadv(src_fd, [memoryview(buf)[: min(len(buf), end - pos)]], pos)
            if n <= 0:
                break
            chunk = memoryview(buf)[:n]
            h.update(chunk)
            _write_all(fd, chunk)
            pos += n
        if pos != end or (sha256 is not None and h.hexdigest() != sha256):
            tmp.unlink()
            return False
        os.fsync(fd)
        os.replace(tmp, dest)
    return True


def copy_region(archive: Path, offset: int, length: int, dest: Path, sha256: str | None = None) -> None:
    """Copy bytes out of an archive file through a temporary file, checking their hash when given."""
    with archive.open("rb") as src:
        ok = copy_range(src.fileno(), offset, length, dest, sha256)
    if not ok:
        raise VerificationError([f"{archive}: a member ended early or changed while it was copied to {dest}"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
