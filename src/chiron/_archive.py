"""The appliance file format: a runnable zipapp with a signed payload region in front of it.

    [shebang line][payload members ...][index JSON][footer 64 B][tool zip (pex or shiv)]

Python's zipimport finds the zip from its end, so the interpreter runs the tool zip whatever lies
before it, and a payload of any size never enters the zip (zipimport on 3.11 cannot run a zip whose
central directory lies past 2 GiB; pex would extract zip entries into PEX_ROOT). The footer sits
right before the zip and points at the index; the index lists every payload member with its offset
and length. Nothing in the index or footer is trusted: the verifier checks that they tile the file
exactly and that every member is signed (see verify.py). docs/format.md describes the format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chiron.errors import VerificationError

FORMAT = "chiron-appliance/1"
ZipTime = tuple[int, int, int, int, int, int]
FOOTER_MAGIC = b"CHIRONA1"
FOOTER = struct.Struct("<8sQQQ32s")  # magic, index offset, index length, zip offset, sha256(index)
FOOTER_SIZE = FOOTER.size
CHUNK = 1 << 20
# Members larger than this also get signed per-piece hashes, so verify can hash one large member on
# every core (a single sha256 is sequential); 64 MiB keeps the list short even for 50 GiB.
PIECE = 64 << 20
MAX_INDEX = 64 << 20
MAX_SHEBANG = 256

# Names the format itself gives to regions that are not payload members; they are signed targets.
SHEBANG_TARGET = "_archive/shebang"
TOOL_TARGET = "_archive/tool.zip"
TOOL_MEMBERS_TARGET = "_archive/tool-members.json"
METADATA_PREFIX = "metadata/"


class FormatError(Exception):
    """The file does not have the structure of a chiron appliance; ``str()`` names where."""


def check_member_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe relative POSIX path (no traversal, no oddities)."""
    if not name or len(name) > 1024:
        raise ValueError(f"member name '{name[:80]}' is empty or too long")
    if name.startswith("/") or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"member name '{name}' is absolute or has a backslash or control character")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"member name '{name}' has an empty, '.' or '..' path segment")


def canonical_json(obj: Any) -> bytes:
    """The one serialisation chiron writes for its own JSON, so bytes can be compared exactly."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Member:
    """A payload member: ``length`` bytes at ``offset`` of the archive."""

    name: str
    offset: int
    length: int


@dataclass(frozen=True)
class Layout:
    """Where everything lies in an appliance, as read from its index and footer."""

    size: int
    shebang: bytes
    members: tuple[Member, ...]
    index_offset: int
    index_length: int
    zip_offset: int
    tool_format: str
    index: dict[str, Any]

    @property
    def footer_offset(self) -> int:
        return self.zip_offset - FOOTER_SIZE

    @property
    def zip_length(self) -> int:
        return self.size - self.zip_offset

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def regions(self) -> dict[str, tuple[int, int]]:
        """Every signed region by target name: payload members plus the shebang and the tool zip."""
        out = {m.name: (m.offset, m.length) for m in self.members}
        out[SHEBANG_TARGET] = (0, len(self.shebang))
        out[TOOL_TARGET] = (self.zip_offset, self.zip_length)
        return out


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
        if name in self._names:
            raise ValueError(f"member '{name}' added twice")
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


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading

_EOCD = struct.Struct("<4sHHHHIIH")
_CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LFH = struct.Struct("<4sHHHHHIIIHH")
_EOCD_SIG = b"PK\x05\x06"
_CDH_SIG = b"PK\x01\x02"
_LFH_SIG = b"PK\x03\x04"


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError(f"file ends early: wanted {length} bytes at offset {offset}")
    return data


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
        raise FormatError("no zip end-of-central-directory record at the end of the file (truncated?)")
    _sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    if disk or cd_disk or n_disk != n_total or 0xFFFFFFFF in (cd_size, cd_offset) or n_total == 0xFFFF:
        raise FormatError("the tool zip is multi-disk or zip64; chiron never writes either")
    eocd_pos = size - tail_len + pos
    zip_offset = eocd_pos - cd_size - cd_offset
    if zip_offset < 0:
        raise FormatError("zip central directory points before the start of the file")
    return zip_offset, cd_offset, cd_size, n_total


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not float: the index must be exactly what chiron writes


def read_layout(path: Path) -> Layout:
    """Read index and footer. Structure only: nothing here is trusted until verify checks it."""
    with path.open("rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
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
            index = json.loads(data)
        except ValueError:
            raise FormatError("index is not valid JSON") from None
        if not isinstance(index, dict) or canonical_json(index) != data:
            raise FormatError("index is not in canonical form")
        if index.get("format") != FORMAT:
            raise FormatError(f"unknown appliance format {index.get('format')!r}; this chiron reads {FORMAT}")
        # The index is not signed, so it may hold nothing but what the format defines.
        if set(index) != {"format", "tool_format", "shebang_length", "members"} or not isinstance(
            index["members"], list
        ):
            raise FormatError("index has unknown or missing fields")
        if any(not isinstance(m, dict) or set(m) != {"name", "offset", "length"} for m in index["members"]):
            raise FormatError("index member entries have unknown or missing fields")
        if any(
            not isinstance(m["name"], str) or not _is_int(m["offset"]) or not _is_int(m["length"])
            for m in index["members"]
        ) or not (_is_int(index["shebang_length"]) and isinstance(index["tool_format"], str)):
            raise FormatError("index fields have the wrong types")
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


def check_tiling(layout: Layout) -> list[str]:
    """Problems with how the regions cover the file: every byte exactly once, names safe and unique."""
    problems: list[str] = []
    sb = layout.shebang
    if not sb.startswith(b"#!") or not sb.endswith(b"\n") or sb.count(b"\n") != 1:
        problems.append("shebang: the first line is not a single '#!' interpreter line")
    seen: set[str] = set()
    pos = len(sb)
    for m in sorted(layout.members, key=lambda m: (m.offset, m.name)):
        try:
            check_member_name(m.name)
        except ValueError as exc:
            problems.append(f"member {m.name!r}: unsafe name: {exc}")
        if m.name in seen:
            problems.append(f"member {m.name}: listed twice in the index (duplicate member)")
        seen.add(m.name)
        if m.length < 0 or m.offset < 0:
            problems.append(f"member {m.name}: negative offset or length")
        elif m.offset > pos:
            problems.append(f"{m.offset - pos} unaccounted byte(s) at offset {pos}, before member {m.name}")
        elif m.offset < pos:
            problems.append(f"member {m.name}: overlaps the previous region at offset {m.offset}")
        pos = max(pos, m.offset + max(m.length, 0))
    if pos < layout.index_offset:
        problems.append(f"{layout.index_offset - pos} unaccounted byte(s) at offset {pos}, before the index")
    elif pos > layout.index_offset:
        problems.append("the last member overlaps the index")
    return problems


@dataclass(frozen=True)
class ZipEntry:
    """One entry of the tool zip, with absolute offsets into the archive."""

    name: str
    method: int
    crc: int
    compressed_size: int
    file_size: int
    data_offset: int
    mode: int


def check_zip(fd: int, layout: Layout) -> tuple[list[ZipEntry], list[str]]:
    """Walk the tool zip strictly: every local header, data block, the central directory and the
    end record must follow each other with no gap, and agree with each other."""
    problems: list[str] = []
    base = layout.zip_offset
    _zo, cd_offset, cd_size, count = find_zip(fd, layout.size)
    cd = pread_exact(fd, cd_size, base + cd_offset)
    entries: list[tuple[int, str, tuple[int, ...]]] = []
    pos = 0
    names: set[str] = set()
    for _ in range(count):
        if cd[pos : pos + 4] != _CDH_SIG or pos + _CDH.size > len(cd):
            return [], [*problems, "tool zip: central directory is malformed"]
        f = _CDH.unpack_from(cd, pos)
        name_len, extra_len, comment_len = f[10], f[11], f[12]
        raw = cd[pos + _CDH.size : pos + _CDH.size + name_len]
        name = raw.decode("utf-8" if f[3] & 0x800 else "cp437", "replace")
        pos += _CDH.size + name_len + extra_len + comment_len
        if name in names:
            problems.append(f"tool zip member {name}: appears twice (duplicate member name)")
        names.add(name)
        try:
            check_member_name(name)
        except ValueError as exc:
            problems.append(f"tool zip member: unsafe name: {exc}")
        mode = (f[15] >> 16) & 0xFFFF
        if (mode & 0o170000) == 0o120000:
            problems.append(f"tool zip member {name}: is a symbolic link")
        entries.append((f[16], name, f))
    if pos != len(cd):
        problems.append("tool zip: central directory has trailing bytes")
    out: list[ZipEntry] = []
    expect = 0
    for local_offset, name, f in sorted(entries, key=lambda e: e[0]):
        if local_offset != expect:
            kind = "unaccounted bytes" if local_offset > expect else "overlapping entries"
            problems.append(f"tool zip member {name}: {kind} before its local header")
        lfh = pread_exact(fd, _LFH.size, base + local_offset)
        lf = _LFH.unpack(lfh)
        if lf[0] != _LFH_SIG:
            problems.append(f"tool zip member {name}: no local header where the directory says")
            return out, problems
        flags, method, crc, csize, usize, lname_len, lextra_len = (
            lf[2],
            lf[3],
            lf[6],
            lf[7],
            lf[8],
            lf[9],
            lf[10],
        )
        lname = pread_exact(fd, lname_len, base + local_offset + _LFH.size)
        if flags & 0x08:
            problems.append(f"tool zip member {name}: uses a data descriptor, which chiron never writes")
        if lname.decode("utf-8" if flags & 0x800 else "cp437", "replace") != name or (
            method,
            crc,
            csize,
            usize,
        ) != (f[4], f[7], f[8], f[9]):
            problems.append(f"tool zip member {name}: local header disagrees with the central directory")
        data_offset = local_offset + _LFH.size + lname_len + lextra_len
        expect = data_offset + csize
        out.append(ZipEntry(name, method, crc, csize, usize, base + data_offset, (f[15] >> 16) & 0xFFFF))
    if expect != cd_offset:
        problems.append("tool zip: unaccounted bytes between the last entry and the central directory")
    return out, problems


def read_zip_member(fd: int, entry: ZipEntry) -> Iterator[bytes]:
    """Stream a tool zip member's uncompressed bytes (stored or deflated)."""
    import zlib

    if entry.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"tool zip member {entry.name}: compression method {entry.method} is not supported")
    dec = zlib.decompressobj(-15) if entry.method == zipfile.ZIP_DEFLATED else None
    pos, end = entry.data_offset, entry.data_offset + entry.compressed_size
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            raise FormatError(f"tool zip member {entry.name}: file ends inside its data")
        pos += len(chunk)
        yield dec.decompress(chunk) if dec else chunk
    if dec:
        yield dec.flush()


def normalize_zip(src: Path, dest: Path, date_time: ZipTime) -> list[dict[str, Any]]:
    """Rewrite a pex/shiv zip reproducibly (fixed timestamps, no prefix, same entries and order).

    Returns the tool-members manifest: name, size and sha256 of every entry.
    """
    manifest: list[dict[str, Any]] = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            new = zipfile.ZipInfo(info.filename, date_time=date_time)
            new.external_attr = info.external_attr
            new.compress_type = info.compress_type
            new.create_system = 3
            zout.writestr(new, data, compress_type=info.compress_type, compresslevel=6)
            if not info.is_dir():
                manifest.append({"name": info.filename, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return manifest


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
