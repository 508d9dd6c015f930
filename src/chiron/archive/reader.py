"""Reading an appliance's structure: footer, index and how the regions tile the file. Nothing read
here is trusted until verify checks it against the signed targets."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chiron.archive.layout import (
    CHUNK,
    FOOTER,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    FORMAT,
    MAX_INDEX,
    MAX_MEMBERS,
    MAX_SHEBANG,
    Layout,
    Member,
    reserved_name_problem,
)
from chiron.core.fs import copy_range
from chiron.core.text import canonical_json, check_member_name, parse_json, plain, printable
from chiron.errors import FormatError, UsageError, VerificationError


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError(f"file ends early: wanted {length} bytes at offset {offset}")
    return data


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not float: the index must be exactly what chiron writes


def open_regular(path: Path) -> int:
    """Open ``path`` for reading; refuse what is not a regular file (a FIFO would block for ever, a
    device would never end) without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_file(path: Path, limit: int, what: str) -> bytes:
    """A small input file (root metadata, an inventory) read whole: a regular file of at most ``limit``
    bytes, else a UsageError naming ``what`` (``/dev/zero`` would otherwise be read until memory ends)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UsageError(f"{what} {path}: {size} bytes, more than the {limit} a {what} may have")
        data = os.pread(fd, limit + 1, 0)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise UsageError(f"{what} {path}: more than the {limit} bytes a {what} may have")
    return data


def sha256_range(fd: int, offset: int, length: int, advance: Callable[[int], None] | None = None) -> str:
    """sha256 of ``length`` bytes at ``offset``, read in chunks (one buffer, whatever the length)."""
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK * 4, max(length, 1)))
    view = memoryview(buf)
    end = offset + length
    while offset < end:
        n = os.preadv(fd, [view[: min(len(buf), end - offset)]], offset)
        if n <= 0:
            break  # the file ends early: the digest differs from any signed one
        h.update(view[:n])
        offset += n
        if advance is not None:
            advance(n)
    return h.hexdigest()


class ArchiveReader:
    """One appliance, opened once: its layout read once, every region read with bounds through one
    descriptor. Reads are of whatever the file holds now; ``read_checked`` and ``copy_checked``
    compare with a signed sha256, which is how a verified appliance is read after verification.

    The regions must tile the file (``check_tiling``): otherwise opening fails with the first
    problem, or, with ``lenient`` (verify, which lists every problem), ``problems`` holds them all
    and no region can be read.
    """

    def __init__(self, path: Path, *, lenient: bool = False) -> None:
        self.path = path
        self.fd = open_regular(path)
        try:
            self.size = os.fstat(self.fd).st_size
            self.layout = _parse_layout(self.fd, self.size)
            self.problems = check_tiling(self.layout)
            if self.problems and not lenient:
                more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
                raise FormatError(self.problems[0] + more)
            self._regions = {} if self.problems else self.layout.regions()
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def region(self, name: str) -> tuple[int, int]:
        """(offset, length) of a region by its name; FormatError when the archive lacks it."""
        if self.problems:
            raise FormatError(f"{self.path}: its regions do not tile the file: {self.problems[0]}")
        try:
            return self._regions[name]
        except KeyError:
            raise FormatError(f"member {plain(name)}: not in {self.path}") from None

    def has(self, name: str) -> bool:
        return name in self._regions

    def read(self, name: str, limit: int | None = None) -> bytes:
        """A region's bytes, unchecked; refused when longer than ``limit``."""
        offset, length = self.region(name)
        if limit is not None and length > limit:
            raise FormatError(f"member {plain(name)}: {length} bytes, more than the {limit} allowed for it")
        return pread_exact(self.fd, length, offset)

    def sha256(self, name: str) -> str:
        """A region's sha256, read in chunks (unchecked: compare it with a signed one)."""
        return sha256_range(self.fd, *self.region(name))

    def read_checked(self, name: str, sha256: str, limit: int | None = None) -> bytes:
        """A region's bytes, re-hashed against ``sha256`` (the file may change after verification)."""
        data = self.read(name, limit)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise VerificationError(
                [f"member {plain(name)}: changed after verification (the archive is being modified?)"]
            )
        return data

    def copy_checked(self, name: str, sha256: str, dest: Path, prefix: bytes = b"") -> None:
        """Copy a region to ``dest`` (after ``prefix``) through a temporary file, re-hashing it; the
        destination appears only when every byte matched."""
        offset, length = self.region(name)
        if not copy_range(self.fd, offset, length, dest, sha256, prefix=prefix):
            raise VerificationError(
                [f"member {plain(name)}: changed after verification (the archive is being modified?)"]
            )


def read_layout(path: Path) -> Layout:
    """Read index and footer. Structure only: nothing here is trusted until verify checks it."""
    with ArchiveReader(path) as reader:
        return reader.layout


def _parse_layout(fd: int, size: int) -> Layout:
    zip_offset, _cd, _cds, _n = find_zip(fd, size)
    if zip_offset < FOOTER_SIZE:
        raise FormatError("no chiron footer before the tool zip (not a chiron appliance?)")
    magic, index_offset, index_length, footer_zip, index_sha = FOOTER.unpack(
        pread_exact(fd, FOOTER_SIZE, zip_offset - FOOTER_SIZE)
    )
    if magic != FOOTER_MAGIC:
        raise FormatError("no chiron footer before the tool zip (not a chiron appliance, or data was inserted)")
    if footer_zip != zip_offset:
        raise FormatError(
            f"footer says the tool zip starts at {footer_zip} but it starts at {zip_offset} "
            "(data inserted or removed around the zip)"
        )
    if index_length > MAX_INDEX or index_offset + index_length != zip_offset - FOOTER_SIZE:
        raise FormatError("index does not end where the footer begins (data inserted after the payload?)")
    data = pread_exact(fd, index_length, index_offset)
    if hashlib.sha256(data).digest() != index_sha:
        raise FormatError("index bytes do not match the footer's index hash")
    try:
        index = parse_json(data, "index")
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    _check_index_shape(index)
    if canonical_json(index) != data:
        raise FormatError("index is not in canonical form")
    offsets = [m["offset"] for m in index["members"]]
    if offsets != sorted(offsets):
        raise FormatError("index members are not in file order")
    shebang_len: int = index["shebang_length"]
    members = tuple(Member(m["name"], m["offset"], m["length"]) for m in index["members"])
    tool_format: str = index["tool_format"]
    if not 2 < shebang_len <= MAX_SHEBANG:
        raise FormatError("shebang length in the index is out of range")
    shebang = pread_exact(fd, shebang_len, 0)
    return Layout(
        size=size,
        shebang=shebang,
        members=members,
        index_offset=index_offset,
        index_length=index_length,
        zip_offset=zip_offset,
        tool_format=tool_format,
        index=index,
    )


def _check_index_shape(index: Any) -> None:
    """The index is not signed, so it may hold nothing but what the format defines, typed exactly."""
    if not isinstance(index, dict):
        raise FormatError("index is not a JSON object")
    if index.get("format") != FORMAT:
        shown = plain(repr(index.get("format"))[:80])
        raise FormatError(f"unknown appliance format {shown}; this chiron reads {FORMAT}")
    if set(index) != {"format", "tool_format", "shebang_length", "members"} or not isinstance(index["members"], list):
        raise FormatError("index has unknown or missing fields")
    if len(index["members"]) > MAX_MEMBERS:
        raise FormatError(f"index lists {len(index['members'])} members, over the limit of {MAX_MEMBERS} chiron reads")
    if any(not isinstance(m, dict) or set(m) != {"name", "offset", "length"} for m in index["members"]):
        raise FormatError("index member entries have unknown or missing fields")
    if any(
        not isinstance(m["name"], str) or not _is_int(m["offset"]) or not _is_int(m["length"]) for m in index["members"]
    ) or not (_is_int(index["shebang_length"]) and isinstance(index["tool_format"], str)):
        raise FormatError("index fields have the wrong types")


def check_tiling(layout: Layout) -> list[str]:
    """Problems with how the regions cover the file: every byte exactly once, names safe and unique."""
    problems: list[str] = []
    sb = layout.shebang
    if not sb.startswith(b"#!") or not sb.endswith(b"\n") or sb.count(b"\n") != 1:
        problems.append("shebang: the first line is not a single '#!' interpreter line")
    seen: set[str] = set()
    pos = len(sb)
    for m in sorted(layout.members, key=lambda m: (m.offset, m.name)):
        name = plain(m.name)
        try:
            check_member_name(m.name)
        except ValueError as exc:
            problems.append(f"member {printable(m.name)}: unsafe name: {exc}")
        else:
            reserved = reserved_name_problem(m.name)
            if reserved is not None:
                problems.append(f"member {name}: not allowed: {reserved}")
        if m.name in seen:
            problems.append(f"member {name}: listed twice in the index (duplicate member)")
        seen.add(m.name)
        if m.length < 0 or m.offset < 0:
            problems.append(f"member {name}: negative offset or length")
        elif m.offset > pos:
            problems.append(f"{m.offset - pos} unaccounted byte(s) at offset {pos}, before member {name}")
        elif m.offset < pos:
            problems.append(f"member {name}: overlaps the previous region at offset {m.offset}")
        pos = max(pos, m.offset + max(m.length, 0))
    if pos < layout.index_offset:
        problems.append(f"{layout.index_offset - pos} unaccounted byte(s) at offset {pos}, before the index")
    elif pos > layout.index_offset:
        problems.append("the last member overlaps the index")
    return problems


_EOCD = struct.Struct("<4sHHHHIIH")
# A tool zip of tens of thousands of files has a central directory of a few MiB.
MAX_CENTRAL_DIRECTORY = 64 << 20


_EOCD_SIG = b"PK\x05\x06"


def find_zip(fd: int, size: int) -> tuple[int, int, int, int]:
    """Locate the trailing zip: (zip offset, central directory offset, its size, entry count).

    The central directory offset returned is relative to the zip's start.
    """
    tail_len = min(size, 65535 + _EOCD.size)
    tail = pread_exact(fd, tail_len, size - tail_len)
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            fields = _EOCD.unpack_from(tail, pos)
            comment_len = fields[7]
            if pos + _EOCD.size + comment_len == len(tail):
                break
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    if pos < 0:
        raise FormatError("no zip end record at the end of the file: the copy is truncated, or bytes were appended")
    _sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    if disk or cd_disk or n_disk != n_total or 0xFFFFFFFF in (cd_size, cd_offset) or n_total == 0xFFFF:
        raise FormatError("the tool zip is multi-disk or zip64; chiron never writes either")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise FormatError(f"the tool zip's central directory is {cd_size} bytes, more than chiron reads")
    eocd_pos = size - tail_len + pos
    zip_offset = eocd_pos - cd_size - cd_offset
    if zip_offset < 0:
        raise FormatError("zip central directory points before the start of the file")
    return zip_offset, cd_offset, cd_size, n_total
