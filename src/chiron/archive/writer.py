"""The reproducible appliance writer: members in the order added, then index, footer and tool zip."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chiron.archive.layout import (
    CHUNK,
    FOOTER,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    FORMAT,
    MAX_MEMBERS,
    MAX_SHEBANG,
    PIECE,
    Member,
    reserved_name_problem,
)
from chiron.core.fs import fsync_dir
from chiron.core.text import canonical_json, check_member_name


@dataclass(frozen=True)
class Written:
    """What the writer recorded about one member."""

    name: str
    length: int
    sha256: str
    pieces: tuple[str, ...] = ()


class ArchiveWriter:
    """Write an appliance to a temporary file beside ``out``; ``finish`` renames it into place.

    Members are written in the order added; callers add them in a deterministic order so that the
    same inputs give the same bytes.
    """

    def __init__(self, out: Path, shebang: bytes) -> None:
        if not shebang.startswith(b"#!") or not shebang.endswith(b"\n") or shebang.count(b"\n") != 1:
            raise ValueError("shebang must be one line starting with #! and ending with a newline")
        if len(shebang) > MAX_SHEBANG:
            raise ValueError(f"shebang is longer than {MAX_SHEBANG} bytes")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
        self._tmp = Path(tmp)
        self._f: IO[bytes] = os.fdopen(fd, "wb")
        # Running SHA-512 of the whole file for the detached SSH signature, so signing needs no re-read.
        self._whole = hashlib.sha512()
        self._write(shebang)
        self._shebang = shebang
        self._members: list[Member] = []
        self._names: set[str] = set()

    def _write(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self._whole.update(data)

    def _start(self, name: str) -> int:
        check_member_name(name)
        reserved = reserved_name_problem(name)
        if reserved is not None:
            raise ValueError(f"member {name!r} cannot be added: {reserved}")
        if name in self._names:
            raise ValueError(f"member {name!r} added twice")
        if len(self._names) >= MAX_MEMBERS:
            raise ValueError(f"more than {MAX_MEMBERS} members: no chiron could read the appliance")
        self._names.add(name)
        return self._f.tell()

    def add_bytes(self, name: str, data: bytes) -> Written:
        offset = self._start(name)
        self._write(data)
        self._members.append(Member(name, offset, len(data)))
        return Written(name, len(data), hashlib.sha256(data).hexdigest())

    def add_file(self, name: str, src: Path) -> Written:
        """Copy a file in, hashing as it goes (one read of the source)."""
        offset = self._start(name)
        h, piece = hashlib.sha256(), hashlib.sha256()
        pieces: list[str] = []
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        done = 0
        with src.open("rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                self._write(view[:n])
                start = 0
                while start < n:  # split the read at piece boundaries, whatever its length
                    take = min(n - start, PIECE - done % PIECE)
                    piece.update(view[start : start + take])
                    start += take
                    done += take
                    if done % PIECE == 0:
                        pieces.append(piece.hexdigest())
                        piece = hashlib.sha256()
        if done % PIECE:
            pieces.append(piece.hexdigest())
        self._members.append(Member(name, offset, done))
        return Written(name, done, h.hexdigest(), tuple(pieces) if done > PIECE else ())

    def finish(self, tool_zip: Path, tool_format: str) -> bytes:
        """Write index, footer and tool zip; fsync; atomically rename over ``out``.

        Returns the SHA-512 digest of the whole file.
        """
        index_offset = self._f.tell()
        index = {
            "format": FORMAT,
            "tool_format": tool_format,
            "shebang_length": len(self._shebang),
            "members": [{"name": m.name, "offset": m.offset, "length": m.length} for m in self._members],
        }
        data = canonical_json(index)
        self._write(data)
        zip_offset = index_offset + len(data) + FOOTER_SIZE
        self._write(FOOTER.pack(FOOTER_MAGIC, index_offset, len(data), zip_offset, hashlib.sha256(data).digest()))
        with tool_zip.open("rb") as z:
            while chunk := z.read(CHUNK):
                self._write(chunk)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.chmod(self._tmp, 0o755)  # noqa: S103 - an appliance is an executable meant to be run
        os.replace(self._tmp, self.out)
        fsync_dir(self.out.parent)
        return self._whole.digest()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()
