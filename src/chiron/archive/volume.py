"""Volumes: an appliance (or a delta) cut into files that fit removable media or a guard's size cap,
each of which can be checked on its own (docs/format.md#volumes, ADR 0011)::

    [8 bytes "CHIRONVL"][8 bytes little-endian: header length][header JSON][carried members][data]

The header (canonical JSON, ``chiron-volume/1``) names the whole file (kind, name, version, file
name, size, sha256), this volume's number and count, the byte range of the whole it holds
(``offset``, ``length``) with that range's sha256, and the members it carries. A volume of an
appliance carries the shebang, ``appliance.json``, every ``metadata/`` member and the index with
its footer (all small): so every volume holds the TUF metadata and the layout, and a verifier
checks its range against the signed hashes without any other volume. A volume of a delta carries
nothing (a delta is not signed; ADR 0006).

Nothing in the header is trusted: the verifier (engines/media) checks the carried metadata through
TUF and every byte of the range against signed hashes. This module reads and writes the structure,
strictly and with bounds.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chiron.archive.layout import (
    FOOTER_SIZE,
    INDEX_EXTENT,
    MAX_INDEX,
    MAX_SHEBANG,
    SHEBANG_TARGET,
    Layout,
    is_metadata_file,
)
from chiron.archive.manifest import MANIFEST, MAX_MANIFEST
from chiron.archive.reader import check_tiling, layout_from_parts, open_regular, pread_exact
from chiron.core.text import canonical_json, check_member_name, parse_json, plain, unsafe_char
from chiron.errors import FormatError

FORMAT = "chiron-volume/1"
MAGIC = b"CHIRONVL"
HEAD = struct.Struct("<8sQ")
MAX_HEADER = 1 << 20  # a header lists a few hundred carried members at most
MAX_CARRIED = 256 << 20  # the metadata, manifest, shebang and index every volume carries: read into memory
MAX_VOLUMES = 9999
MIN_SIZE = 1 << 20  # the smallest --size split accepts: below it the carried metadata is most of a volume
MAX_TEXT = 256  # name, version and file name in a header
SUFFIX = ".chv"
Kind = Literal["appliance", "delta"]
KINDS: tuple[Kind, ...] = ("appliance", "delta")
# Longest metadata member a volume may carry (targets.json's bound in the TUF client); others are smaller.
MAX_CARRIED_MEMBER = max(MAX_INDEX + FOOTER_SIZE, MAX_MANIFEST, 64 << 20)
_FIELDS = frozenset(
    {"format", "kind", "name", "version", "file", "size", "sha256", "number", "count", "offset", "length"}
    | {"data_sha256", "carried"}
)
_SAFE = re.compile(r"[A-Za-z0-9._-]")
SAFE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def safe_name(text: str) -> str:
    """``text`` in the characters every medium, guard and scanner accepts (ASCII letters, digits,
    ``.``, ``_``, ``-``), anything else replaced by ``_`` (``1.0.0+1795485862`` -> ``1.0.0_1795485862``);
    never starting with ``.`` or ``-`` (a hidden file, an option), at most 200 characters."""
    out = "".join(c if _SAFE.fullmatch(c) else "_" for c in text)[:200]
    return "_" + out[1:] if not out or out[0] in ".-" else out


def set_stem(name: str | None, version: str | None, kind: Kind, fallback: str) -> str:
    """``NAME-VERSION`` (``NAME-VERSION.delta`` for a delta) in safe characters: what a set's files
    are called; ``fallback`` (the file name) when the whole does not name itself."""
    stem = safe_name(f"{name}-{version}" if name and version else fallback)
    return stem + ".delta" if kind == "delta" else stem


def volume_file(stem: str, number: int, count: int) -> str:
    """``STEM.partNNN-of-MMM.chv``, the numbers zero-padded alike so that names sort in order."""
    width = max(3, len(str(count)))
    return f"{stem}.part{number:0{width}d}-of-{count:0{width}d}{SUFFIX}"


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume says about itself and the whole it is part of (unverified until checked)."""

    kind: Kind
    name: str | None
    version: str | None
    file: str  # the whole's file name, in safe characters
    size: int  # the whole's size
    sha256: str  # the whole's sha256
    number: int
    count: int
    offset: int  # where this volume's bytes lie in the whole
    length: int
    data_sha256: str  # sha256 of those bytes
    carried: tuple[tuple[str, int], ...]

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def set_key(self) -> tuple[object, ...]:
        """What every volume of one split shares: two volumes that differ here belong to two sets."""
        return (self.kind, self.name, self.version, self.file, self.size, self.sha256, self.count)

    @property
    def label(self) -> str:
        """``demo 1.0.0`` (``delta of demo 1.0.0``), escaped for printing."""
        what = f"{plain(self.name)} {plain(self.version)}" if self.name and self.version else plain(self.file)
        return f"delta of {what}" if self.kind == "delta" else what

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "number": self.number,
            "count": self.count,
            "offset": self.offset,
            "length": self.length,
            "data_sha256": self.data_sha256,
            "carried": [{"name": n, "length": n_len} for n, n_len in self.carried],
        }

    def encode(self) -> bytes:
        """The magic, the header's length and the header: the first bytes of the volume."""
        raw = canonical_json(self.as_json())
        return HEAD.pack(MAGIC, len(raw)) + raw


def carried_names(layout: Layout) -> list[tuple[str, int]]:
    """What each volume of this appliance carries, in order: the shebang, the manifest, every TUF
    metadata member (in index order), the index with its footer."""
    out = [(SHEBANG_TARGET, len(layout.shebang))]
    out += [(m.name, m.length) for m in layout.members if m.name == MANIFEST or is_metadata_file(m.name)]
    out.append((INDEX_EXTENT, layout.zip_offset - layout.index_offset))
    return out


def _is_int(value: object, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _text(value: object, key: str, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or unsafe_char(value) is not None:
        raise ValueError(f"{key} is not a printable string of at most {MAX_TEXT} characters")
    return value


def parse_header(raw: bytes) -> VolumeHeader:
    """The header in ``raw``, or FormatError naming what is wrong: exactly the fields chiron writes,
    typed, bounded, consistent, in canonical form."""
    try:
        obj = parse_json(raw, "volume header")
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            shown = plain(repr(obj.get("format") if isinstance(obj, dict) else obj)[:80])
            raise ValueError(f"unknown volume format {shown}; this chiron reads {FORMAT}")
        if set(obj) != _FIELDS:
            raise ValueError("volume header has unknown or missing fields")
        header = _header(obj)
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    if canonical_json(obj) != raw:
        raise FormatError("volume header is not in canonical form")
    return header


def _header(obj: dict[str, Any]) -> VolumeHeader:
    if obj["kind"] not in KINDS:
        raise ValueError(f"volume kind {plain(repr(obj['kind'])[:40])} is not appliance or delta")
    ints = ("size", "number", "count", "offset", "length")
    if not all(_is_int(obj[k]) for k in ints) or not all(
        isinstance(obj[k], str) and _HEX64.fullmatch(obj[k]) for k in ("sha256", "data_sha256")
    ):
        raise ValueError("volume header fields have the wrong types")
    if not 1 <= obj["number"] <= obj["count"] <= MAX_VOLUMES:
        raise ValueError(f"volume {obj['number']} of {obj['count']} is impossible (at most {MAX_VOLUMES})")
    if obj["length"] < 1 or obj["offset"] + obj["length"] > obj["size"]:
        raise ValueError("volume's byte range lies outside the whole file")
    file = _text(obj["file"], "file", False)
    if file is None or not SAFE_FILE.fullmatch(file):
        raise ValueError("file is not a safe file name")
    carried = obj["carried"]
    if not isinstance(carried, list) or len(carried) > 512:
        raise ValueError("carried is not a list of at most 512 members")
    if obj["kind"] == "delta" and carried:
        raise ValueError("a delta's volume carries no members")
    return VolumeHeader(
        kind=obj["kind"],
        name=_text(obj["name"], "name", True),
        version=_text(obj["version"], "version", True),
        file=file,
        size=obj["size"],
        sha256=obj["sha256"],
        number=obj["number"],
        count=obj["count"],
        offset=obj["offset"],
        length=obj["length"],
        data_sha256=obj["data_sha256"],
        carried=tuple(_carried(c, i) for i, c in enumerate(carried)),
    )


def _carried(entry: Any, i: int) -> tuple[str, int]:
    if not isinstance(entry, dict) or set(entry) != {"name", "length"}:
        raise ValueError(f"carried[{i}] does not have exactly name and length")
    if not isinstance(entry["name"], str) or not _is_int(entry["length"]):
        raise ValueError(f"carried[{i}] has fields of the wrong types")
    check_member_name(entry["name"])  # ValueError, the name escaped
    if entry["length"] > MAX_CARRIED_MEMBER:
        raise ValueError(f"carried member {plain(entry['name'])} is longer than any chiron carries")
    return entry["name"], entry["length"]


def is_volume(path: Path) -> bool:
    """Whether ``path`` starts like a volume (a FIFO or a device is refused, never read)."""
    fd = open_regular(path)
    try:
        return os.pread(fd, len(MAGIC), 0) == MAGIC
    finally:
        os.close(fd)


def read_header(path: Path) -> VolumeHeader | None:
    """The header of the volume at ``path``; None when the file is not a volume (a FIFO or a device
    is refused without blocking, as everywhere)."""
    fd = open_regular(path)
    try:
        return _read_header(fd, os.fstat(fd).st_size)[0]
    finally:
        os.close(fd)


def _read_header(fd: int, size: int) -> tuple[VolumeHeader | None, int]:
    head = os.pread(fd, HEAD.size, 0)
    if len(head) < HEAD.size or head[:8] != MAGIC:
        return None, 0
    _magic, hlen = HEAD.unpack(head)
    if hlen > MAX_HEADER or HEAD.size + hlen > size:
        raise FormatError(f"volume header length {hlen} is impossible for a {size}-byte file")
    return parse_header(pread_exact(fd, hlen, HEAD.size)), HEAD.size + hlen


class VolumeReader:
    """One volume, opened once: its header, where the carried members and the data lie, and (for a
    volume of an appliance) the whole's layout rebuilt from the carried shebang and index, checked as
    strictly as the reader checks an appliance's own. A MemberSource over the carried members, so
    the TUF client reads a volume's metadata exactly as it reads an appliance's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = open_regular(path)
        try:
            self.size = os.fstat(self.fd).st_size
            header, pos = _read_header(self.fd, self.size)
            if header is None:
                raise FormatError(f"{path}: not a chiron volume")
            self.header = header
            self.carried_offset = pos
            self.carried: dict[str, tuple[int, int]] = {}
            for name, length in header.carried:
                if name in self.carried:
                    raise FormatError(f"carried member {plain(name)} is listed twice")
                self.carried[name] = (pos, length)
                pos += length
            self.data_offset = pos
            if self.size != pos + header.length:
                raise FormatError(
                    f"volume is {self.size} bytes, its header says {pos + header.length} "
                    f"({'truncated: an incomplete copy?' if self.size < pos + header.length else 'bytes appended'})"
                )
            carried_bytes = pos - self.carried_offset
            if carried_bytes > MAX_CARRIED:
                raise FormatError(f"volume carries {carried_bytes} bytes of metadata, more than {MAX_CARRIED}")
            # Read once: the TUF client, the plan and carried_sha256 all see these bytes, whatever
            # happens to the file meanwhile (a medium or an inbox rewritten during the run).
            self._carried_bytes = pread_exact(self.fd, carried_bytes, self.carried_offset)
            self._layout = self._read_layout() if header.kind == "appliance" else None
        except BaseException:
            os.close(self.fd)
            raise

    def _read_layout(self) -> Layout:
        if SHEBANG_TARGET not in self.carried or INDEX_EXTENT not in self.carried:
            raise FormatError("volume does not carry the shebang and the index")
        shebang = self.read(SHEBANG_TARGET, MAX_SHEBANG)
        layout = layout_from_parts(shebang, self.read(INDEX_EXTENT, MAX_INDEX + FOOTER_SIZE), self.header.size)
        problems = check_tiling(layout)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise FormatError(problems[0] + more)
        if list(self.header.carried) != carried_names(layout):
            raise FormatError("volume does not carry exactly the shebang, manifest, metadata and index its index lists")
        return layout

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise FormatError(f"{self.path}: a volume of a delta has no appliance layout")
        return self._layout

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VolumeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return name in self.carried

    def region(self, name: str) -> tuple[int, int]:
        """Where a carried member lies in this volume file."""
        try:
            return self.carried[name]
        except KeyError:
            raise FormatError(f"member {plain(name)}: not carried by {self.path}") from None

    def read(self, name: str, limit: int | None = None) -> bytes:
        """A carried member's bytes (from the one read of them), unchecked; refused when longer than ``limit``."""
        offset, length = self.region(name)
        if limit is not None and length > limit:
            raise FormatError(f"member {plain(name)}: {length} bytes, more than the {limit} allowed for it")
        at = offset - self.carried_offset
        return self._carried_bytes[at : at + length]

    def carried_sha256(self) -> str:
        """sha256 of everything the volume carries (its carried members one after another): equal in
        every volume of one split, and to the same members read from the appliance itself, so it
        names the build whichever way it arrives (receive keys its staging on it)."""
        return hashlib.sha256(self._carried_bytes).hexdigest()


def manifest_text(header: VolumeHeader, files: list[tuple[str, int, str]]) -> str:
    """The plain-text manifest of a set: a comment line, then ``SIZE SHA256 FILE`` per file."""
    lines = [
        f"# chiron volumes of {header.label}: {header.file}, {header.size} bytes, sha256 {header.sha256}; "
        f"{header.count} volume(s). Columns: size, sha256, file.",
    ]
    lines += [f"{size} {sha} {name}" for name, size, sha in files]
    return "\n".join(lines) + "\n"
