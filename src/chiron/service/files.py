"""What the service reads out of a verified appliance to serve it: the identity of the file, the
wheels (and sdists) it holds with their PEP 658 core metadata, read through a bounded view of the
appliance so a large wheel is never loaded whole."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

from chiron.errors import ChironError
from chiron.sources.wheelmeta import core_metadata, parse_metadata


@dataclass(frozen=True)
class FileSig:
    """What identifies a file's content without reading it (ctime changes on any write)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileSig:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class RegionFile(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``offset`` of ``fd`` (a wheel in an appliance)."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd, self._offset, self._length, self._pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._length - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [view[:want]], self._offset + self._pos)
        self._pos += n
        return n


@dataclass(frozen=True)
class Dist:
    """One file of the package index: a wheel (or sdist) inside an appliance, as signed."""

    filename: str
    project: str  # normalized (PEP 503)
    version: str
    member: str
    offset: int
    size: int
    sha256: str
    requires_python: str | None
    metadata: bytes | None  # PEP 658 core metadata, wheels only
    metadata_sha256: str | None


def read_metadata(fd: int, offset: int, length: int, filename: str) -> tuple[bytes | None, str | None, str | None]:
    """A wheel's core metadata, its sha256 and Requires-Python (None for an sdist or an unreadable wheel:
    it is still served, without PEP 658 metadata)."""
    if not filename.endswith(".whl"):
        return None, None, None
    try:
        raw = core_metadata(io.BufferedReader(RegionFile(fd, offset, length)), filename)
    except ChironError:
        return None, None, None
    requires = parse_metadata(raw).get("Requires-Python")
    return raw, hashlib.sha256(raw).hexdigest(), str(requires).strip() if requires else None
