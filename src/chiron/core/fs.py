"""File helpers every layer uses: atomic and private writes, fsync of a directory, hashing, copying
a byte range while hashing it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from chiron.errors import VerificationError

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_region(archive: Path, offset: int, length: int, dest: Path, sha256: str | None = None) -> None:
    """Copy bytes out of the archive through a temporary file, checking their hash when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    h = hashlib.sha256()
    with archive.open("rb") as src, tmp.open("wb") as out:
        src.seek(offset)
        left = length
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if left or (sha256 and h.hexdigest() != sha256):
        tmp.unlink()
        raise VerificationError([f"{archive}: a member ended early or changed while it was copied to {dest}"])
    os.replace(tmp, dest)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 from the start (never world-readable, even briefly)."""
    write_atomic(path, data, mode=0o600)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
