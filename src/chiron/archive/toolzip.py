"""The tool zip at the end of an appliance: found from the end, walked strictly, read with bounds, and
written reproducibly."""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.archive.layout import CHUNK, TOOL_MEMBERS_TARGET, Layout, ZipTime
from chiron.archive.reader import find_zip, pread_exact
from chiron.core.text import check_member_name, parse_json, plain
from chiron.errors import FormatError

# Bound on one tool file's uncompressed size when nothing signed says more (chiron's largest is a few MiB).
MAX_TOOL_MEMBER = 256 << 20

_CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")


_LFH = struct.Struct("<4sHHHHHIIIHH")


_CDH_SIG = b"PK\x01\x02"


_LFH_SIG = b"PK\x03\x04"


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


# One strict walk, kept whole: splitting it would spread the offsets each step checks against.
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
            problems.append(f"tool zip member {plain(name)}: appears twice (duplicate member name)")
        names.add(name)
        try:
            check_member_name(name)
        except ValueError as exc:
            problems.append(f"tool zip member: unsafe name: {exc}")
        mode = (f[15] >> 16) & 0xFFFF
        if (mode & 0o170000) == 0o120000:
            problems.append(f"tool zip member {plain(name)}: is a symbolic link")
        entries.append((f[16], name, f))
    if pos != len(cd):
        problems.append("tool zip: central directory has trailing bytes")
    out: list[ZipEntry] = []
    expect = 0
    for local_offset, name, f in sorted(entries, key=lambda e: e[0]):
        shown = plain(name)
        if local_offset != expect:
            kind = "unaccounted bytes" if local_offset > expect else "overlapping entries"
            problems.append(f"tool zip member {shown}: {kind} before its local header")
        lfh = pread_exact(fd, _LFH.size, base + local_offset)
        lf = _LFH.unpack(lfh)
        if lf[0] != _LFH_SIG:
            problems.append(f"tool zip member {shown}: no local header where the directory says")
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
            problems.append(f"tool zip member {shown}: uses a data descriptor, which chiron never writes")
        if lname.decode("utf-8" if flags & 0x800 else "cp437", "replace") != name or (
            method,
            crc,
            csize,
            usize,
        ) != (f[4], f[7], f[8], f[9]):
            problems.append(f"tool zip member {shown}: local header disagrees with the central directory")
        data_offset = local_offset + _LFH.size + lname_len + lextra_len
        expect = data_offset + csize
        out.append(ZipEntry(name, method, crc, csize, usize, base + data_offset, (f[15] >> 16) & 0xFFFF))
    if expect != cd_offset:
        problems.append("tool zip: unaccounted bytes between the last entry and the central directory")
    return out, problems


def read_zip_member(fd: int, entry: ZipEntry, limit: int = MAX_TOOL_MEMBER) -> Iterator[bytes]:
    """Stream a tool zip member's uncompressed bytes (stored or deflated), at most ``CHUNK`` at a time.

    Never more than the entry's declared size, nor ``limit``: a member that inflates beyond either
    (a zip bomb: gigabytes of zeros in a few megabytes) is a FormatError as soon as it does, having
    cost one chunk of memory and no more work than its declared size.
    """
    name = plain(entry.name)
    if entry.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"tool zip member {name}: compression method {entry.method} is not supported")
    if entry.file_size > limit:
        raise FormatError(f"tool zip member {name}: declares {entry.file_size} bytes, more than {limit}")
    if entry.method == zipfile.ZIP_STORED and entry.compressed_size != entry.file_size:
        raise FormatError(f"tool zip member {name}: stored, but its sizes differ")
    dec = zlib.decompressobj(-15) if entry.method == zipfile.ZIP_DEFLATED else None
    produced = 0
    pos, end = entry.data_offset, entry.data_offset + entry.compressed_size
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            raise FormatError(f"tool zip member {name}: file ends inside its data")
        pos += len(chunk)
        if dec is None:
            yield chunk
            continue
        while chunk:
            # max_length bounds each output; the input it held back waits in unconsumed_tail.
            out = dec.decompress(chunk, CHUNK)
            chunk = dec.unconsumed_tail
            produced += len(out)
            if produced > entry.file_size:
                raise FormatError(f"tool zip member {name}: inflates beyond its declared {entry.file_size} bytes")
            yield out
    while dec is not None and not dec.eof:
        out = dec.decompress(b"", CHUNK)  # output the bound held back after the last input
        if not out:
            break
        produced += len(out)
        if produced > entry.file_size:
            raise FormatError(f"tool zip member {name}: inflates beyond its declared {entry.file_size} bytes")
        yield out
    if dec is not None and not dec.eof:
        raise FormatError(f"tool zip member {name}: its compressed data ends early")
    if dec is not None and produced != entry.file_size:
        raise FormatError(f"tool zip member {name}: inflates to {produced} bytes, not its declared {entry.file_size}")


def diagnose_tool(fd: int, entries: list[ZipEntry], signed_list: bytes) -> list[str]:
    """The tool zip differs from the signed one, but its signed member list is intact: compare the zip
    entry by entry with that list to say which tool files were added, removed or changed.

    Every entry is inflated at most to its signed size: the diagnosis costs what the signed tool
    costs, whatever the changed zip holds.
    """
    try:
        signed = {str(m["name"]): (int(m["size"]), str(m["sha256"])) for m in parse_json(signed_list, "tool list")}
    except (ValueError, KeyError, TypeError):
        return [f"member {TOOL_MEMBERS_TARGET}: is not a valid tool member list"]
    problems: list[str] = []
    files = {e.name: e for e in entries if not e.name.endswith("/")}
    for name in sorted(set(files) - set(signed)):
        problems.append(f"tool zip member {plain(name)}: not signed (added to the tool code)")
    for name in sorted(set(signed) - set(files)):
        problems.append(f"tool zip member {plain(name)}: signed but missing from the tool code (removed)")
    for name in sorted(set(files) & set(signed)):
        size, digest = signed[name]
        if files[name].file_size != size or not _inflates_to(fd, files[name], size, digest):
            problems.append(f"tool zip member {plain(name)}: content differs from the signed tool code (modified)")
    if not problems:
        problems.append("tool zip: headers or directory differ from the signed zip (member contents intact)")
    return problems


def _inflates_to(fd: int, entry: ZipEntry, size: int, digest: str) -> bool:
    h = hashlib.sha256()
    try:
        for chunk in read_zip_member(fd, entry, limit=size):
            h.update(chunk)
    except (FormatError, zlib.error):
        return False
    return h.hexdigest() == digest


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
