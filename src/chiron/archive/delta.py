"""Deltas: carry only what a host lacks, and rebuild the full appliance on the host byte for byte.

A delta describes the full appliance as a list of extents in file order (the shebang, each member,
the index with its footer, the tool zip), each with its length and sha256, and carries the bytes of
the extents the base lacks::

    [8-byte magic "CHIRONDL"][8-byte little-endian header length][header JSON][carried extents ...]

The base is an older appliance or a host's inventory (``chiron inventory``): the sha256 of every piece
the host holds. On the host, ``upgrade`` rebuilds the full file from the delta and the appliances it
kept for its releases, checking every extent's hash as it is copied and the whole file's hash at the
end, then verifies the result exactly like a full appliance (TUF metadata, every target). Nothing in
the header is trusted: a wrong header can only produce a file that fails that verification. The
rebuilt file is identical to the full appliance, so its detached signature (``.sig``) applies too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from chiron.archive.layout import (
    INDEX_EXTENT,
    MAX_MEMBERS,
    METADATA_PREFIX,
    SHEBANG_TARGET,
    TOOL_TARGET,
    reserved_name_problem,
)
from chiron.archive.manifest import MANIFEST, MAX_MANIFEST, parse_manifest
from chiron.archive.reader import ArchiveReader, open_regular, pread_exact, read_file, sha256_range
from chiron.core.fs import sha256_file, temp_beside, write_atomic
from chiron.core.text import canonical_json, check_member_name, parse_json, plain
from chiron.errors import FormatError, Refused, UsageError, VerificationError

FORMAT = "chiron-delta/1"
INVENTORY_SCHEMA = "chiron.inventory/1"
MAGIC = b"CHIRONDL"
HEAD = struct.Struct("<8sQ")
MAX_HEADER = 16 << 20  # ~90,000 extents; a bound on what parsing a header can cost
MAX_INVENTORY = 256 << 20  # ~3.5 million sha256 entries
MAX_TARGETS = 64 << 20  # the targets metadata's bound in verify (trust/client.py)
CHUNK = 1 << 20
# Extents that are regions of the format, not members: the only names a header may give them.
_FORMAT_EXTENTS = frozenset({SHEBANG_TARGET, INDEX_EXTENT, TOOL_TARGET})


@dataclass(frozen=True)
class Extent:
    name: str
    length: int
    sha256: str
    carried: bool


@dataclass(frozen=True)
class Delta:
    path: Path
    header: dict[str, Any]
    extents: tuple[Extent, ...]
    data_offset: int  # where the first carried extent starts in the delta file
    name: str | None = None
    version: str | None = None
    total: int = 0  # the rebuilt appliance's size
    sha256: str = ""  # the rebuilt appliance's sha256

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def is_delta(path: Path) -> bool:
    """Whether ``path`` starts like a delta. A FIFO or a device is refused (UsageError), never read."""
    fd = open_regular(path)
    try:
        return os.pread(fd, len(MAGIC), 0) == MAGIC
    finally:
        os.close(fd)


def _targets(reader: ArchiveReader) -> dict[str, str]:
    """Target name -> sha256 from an archive's targets metadata (not verified: hashes are re-checked)."""
    from tuf.api.metadata import Metadata, Targets

    name = f"{METADATA_PREFIX}targets.json"
    if not reader.has(name):
        raise FormatError(f"{reader.path}: has no {name}")
    try:
        md = Metadata[Targets].from_bytes(reader.read(name, MAX_TARGETS))
        return {str(n): str(tf.hashes["sha256"]) for n, tf in md.signed.targets.items()}
    except Exception as exc:  # python-tuf raises many kinds for a malformed file (KeyError: no sha256)
        raise FormatError(f"{reader.path}: {name} cannot be read: {plain(str(exc))}") from None


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def base_content(base: Path) -> set[str]:
    """The sha256 of every piece a base provides: an appliance's targets, or an inventory's content."""
    fd = open_regular(base)  # a missing file, a FIFO or a device: a UsageError naming it
    try:
        head = os.pread(fd, 64, 0).lstrip()
    finally:
        os.close(fd)
    if head.startswith(b"{"):
        try:
            inv = parse_json(read_file(base, MAX_INVENTORY, "inventory"), f"{base}")
        except ValueError as exc:
            raise UsageError(f"not an inventory: {exc}") from None
        if (
            not isinstance(inv, dict)
            or inv.get("schema") != INVENTORY_SCHEMA
            or not isinstance(inv.get("content"), list)
            or not all(_is_sha256(c) for c in inv["content"])
        ):
            raise UsageError(f"{base}: not a {INVENTORY_SCHEMA} file (from chiron inventory)")
        return set(inv["content"])
    try:
        # Every region, including metadata files that are not targets (the root chain rarely changes).
        return {sha for name, _off, _len, sha in extents(base) if name != INDEX_EXTENT}
    except FormatError as exc:
        raise UsageError(f"{base}: neither an appliance nor an inventory ({exc.message})") from None


def extents(archive: Path) -> list[tuple[str, int, int, str]]:
    """(name, offset, length, sha256) of every region of the full file, in file order.

    Targets take their hash from the targets metadata; the metadata files and the index (not targets
    themselves, and small) are hashed here. The reader has checked that the regions tile the file.
    """
    with ArchiveReader(archive) as reader:
        layout = reader.layout
        shas = _targets(reader)
        regions = [(r.name, r.offset, r.length) for r in layout.spans()]
        regions.append((INDEX_EXTENT, layout.index_offset, layout.zip_offset - layout.index_offset))
        regions.sort(key=lambda r: r[1])
        out = []
        pos = 0
        for name, off, length in regions:
            if off != pos:
                raise FormatError(f"{archive}: region {plain(name)} does not start where the previous one ends")
            sha = shas.get(name) or sha256_range(reader.fd, off, length)
            out.append((name, off, length, sha))
            pos += length
    if pos != layout.size:
        raise FormatError(f"{archive}: its regions do not cover the file")
    return out


@dataclass(frozen=True)
class Made:
    path: Path
    size: int
    carried: int
    reused: int


def make(base: Path, new: Path, out: Path) -> Made:
    """Write the delta that turns ``base``'s content into ``new`` (atomically)."""
    if out.resolve() in (base.resolve(), new.resolve()):
        raise UsageError(f"{out}: the delta would overwrite its own input; choose another --output")
    have = base_content(base)
    regions = extents(new)
    with ArchiveReader(new) as reader:
        size = reader.size
        whole = sha256_range(reader.fd, 0, size)
        manifest = parse_manifest(reader.read(MANIFEST, MAX_MANIFEST)) if reader.has(MANIFEST) else None
    entries: list[dict[str, Any]] = []
    for rname, _off, length, sha in regions:
        # The shebang and the index are tiny and always carried; metadata changes with every version.
        carried = rname == INDEX_EXTENT or sha not in have
        entries.append({"name": rname, "length": length, "sha256": sha, "carried": carried})
    header = {
        "format": FORMAT,
        "name": manifest.name if manifest else None,
        "version": manifest.version if manifest else None,
        "size": size,
        "sha256": whole,
        "extents": entries,
    }
    raw = canonical_json(header)
    src_fd = open_regular(new)
    try:
        with temp_beside(out) as (fd, tmp), os.fdopen(os.dup(fd), "wb") as dst:
            dst.write(HEAD.pack(MAGIC, len(raw)))
            dst.write(raw)
            for (_n, off, length, _s), e in zip(regions, entries, strict=True):
                if e["carried"]:
                    _copy_range(src_fd, off, length, dst)
            dst.flush()
            os.fsync(dst.fileno())
            os.replace(tmp, out)
    finally:
        os.close(src_fd)
    carried_bytes = sum(int(e["length"]) for e in entries if e["carried"])
    return Made(out, out.stat().st_size, carried_bytes, size - carried_bytes)


def read(path: Path) -> Delta:
    """Parse a delta's header strictly: bounded, typed, names checked; every count and length must
    add up to the file. Nothing in it is trusted (the rebuilt file is verified), but nothing in it
    may crash, exhaust or mislead the reader either."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEAD.size, 0)
        if len(head) != HEAD.size or head[:8] != MAGIC:
            raise UsageError(f"{path}: not a chiron delta")
        _magic, hlen = HEAD.unpack(head)
        if hlen > MAX_HEADER or HEAD.size + hlen > size:
            raise VerificationError([f"{path}: delta header length {hlen} is impossible for a {size}-byte file"])
        raw = pread_exact(fd, hlen, HEAD.size)
    finally:
        os.close(fd)
    try:
        header = parse_json(raw, "header")
        extents = _check_header(header)
    except ValueError as exc:
        raise VerificationError([f"{path}: malformed delta header: {exc}"]) from None
    data_offset = HEAD.size + hlen
    if data_offset + sum(e.length for e in extents if e.carried) != size:
        raise VerificationError([f"{path}: the carried bytes do not match the header (truncated or padded file)"])
    return Delta(
        path, header, extents, data_offset, header.get("name"), header.get("version"), header["size"], header["sha256"]
    )


def _check_header(header: Any) -> tuple[Extent, ...]:
    """The header's extents, or ValueError naming what is wrong with its shape."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} header")
    if not isinstance(header.get("extents"), list) or not _is_sha256(header.get("sha256")):
        raise ValueError("no extents or sha256")
    if not _is_count(header.get("size")):
        raise ValueError("size is not a byte count")
    for key in ("name", "version"):
        if not isinstance(header.get(key), str | None):
            raise ValueError(f"{key} is not a string")
    if len(header["extents"]) > MAX_MEMBERS + len(_FORMAT_EXTENTS):
        raise ValueError(f"{len(header['extents'])} extents, more than an appliance can have")
    extents = tuple(_extent(e, i) for i, e in enumerate(header["extents"]))
    if sum(e.length for e in extents) != header["size"]:
        raise ValueError("extent lengths do not add up to the appliance size")
    if len({e.name for e in extents}) != len(extents):
        raise ValueError("an extent is listed twice")
    return extents


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _extent(e: Any, i: int) -> Extent:
    if not isinstance(e, dict) or set(e) != {"name", "length", "sha256", "carried"}:
        raise ValueError(f"extent {i} does not have exactly name, length, sha256 and carried")
    name, length, sha, carried = e["name"], e["length"], e["sha256"], e["carried"]
    if not isinstance(name, str) or not _is_count(length) or not _is_sha256(sha) or type(carried) is not bool:
        raise ValueError(f"extent {i} has fields of the wrong types")
    if name not in _FORMAT_EXTENTS:
        check_member_name(name)  # ValueError, the name escaped
        reserved = reserved_name_problem(name)
        if reserved is not None:
            raise ValueError(f"extent {plain(name)}: {reserved}")
    return Extent(name, length, sha, carried)


def held_pieces(sources: list[Path]) -> dict[str, list[tuple[Path, int, int]]]:
    """sha256 -> every (appliance, offset, length) that claims to hold it (re-checked when copied).

    The one answer to "what does this host already hold" for deltas and for OCI pulls alike."""
    pieces: dict[str, list[tuple[Path, int, int]]] = {}
    for src in sources:
        try:
            for name, off, length, sha in extents(src):
                if name != INDEX_EXTENT:
                    pieces.setdefault(sha, []).append((src, off, length))
        except (FormatError, VerificationError, UsageError, OSError):
            continue  # a damaged kept appliance only means fewer pieces; what is missing is reported below
    return pieces


def _copy_range(src_fd: int, off: int, length: int, dst: Sink) -> str:
    """Append ``length`` bytes of ``src_fd`` at ``off`` to ``dst``; their sha256."""
    h = hashlib.sha256()
    end = off + length
    while off < end:
        chunk = os.pread(src_fd, min(end - off, CHUNK), off)
        if not chunk:
            break
        h.update(chunk)
        dst.write(chunk)
        off += len(chunk)
    return h.hexdigest()


class Sink(Protocol):
    """Where copied bytes go: a file, or anything that hashes or counts them on the way."""

    def write(self, data: bytes, /) -> object: ...


def copy_piece(src: Path, off: int, length: int, dst: Sink) -> str:
    """Append ``length`` bytes of the file ``src`` at ``off`` to ``dst``; their sha256."""
    fd = open_regular(src)
    try:
        return _copy_range(fd, off, length, dst)
    finally:
        os.close(fd)


def apply(delta_path: Path, sources: list[Path], out: Path) -> Delta:
    """Rebuild the full appliance from the delta and ``sources`` (appliances the host kept) into ``out``.

    Refused (nothing written) when the sources lack a piece or the disk lacks room; every extent is
    hash-checked as it is copied (a kept copy that does not match is skipped for the next one).
    """
    d = read(delta_path)
    pieces = held_pieces(sources)
    missing = [
        e for e in d.extents if not e.carried and not any(n == e.length for _s, _o, n in pieces.get(e.sha256, []))
    ]
    if missing:
        names = ", ".join(plain(e.name) for e in missing[:3])
        names += f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise Refused(
            f"{delta_path}: this host does not hold {len(missing)} piece(s) the delta builds on: {names}",
            hint="carry the full appliance instead, or a delta made from this host's inventory (chiron inventory)",
        )
    # The header is not trusted: bound what it can make the host write before anything is written.
    bound = d.size + sum(p.stat().st_size for p in sources)
    if d.total > bound:
        raise VerificationError(
            [f"{delta_path}: claims a {d.total}-byte appliance, more than the delta and the host's appliances hold"]
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < d.total:
        raise Refused(
            f"not enough free space on {out.parent} to rebuild {delta_path.name}: it needs {d.total >> 20} MiB, "
            f"{free >> 20} MiB are free",
            hint="free space on the state directory's filesystem; nothing was changed",
        )
    with temp_beside(out, 0o755) as (fd, tmp):
        with os.fdopen(os.dup(fd), "wb") as dst:
            _assemble(d, pieces, dst)
            dst.flush()
            os.fsync(dst.fileno())
        if sha256_file(tmp) != d.sha256:
            raise VerificationError([f"{delta_path}: the rebuilt appliance does not hash to the delta's sha256"])
        os.replace(tmp, out)  # an appliance is executable, like the original (mode 0755 above)
    return d


def _assemble(d: Delta, pieces: dict[str, list[tuple[Path, int, int]]], dst: IO[bytes]) -> None:
    """Write every extent in order, each from the first source whose bytes match its sha256."""
    pos = d.data_offset
    for e in d.extents:
        start = dst.tell()
        if e.carried:
            candidates = [(d.path, pos, e.length)]
            pos += e.length
        else:
            candidates = [c for c in pieces[e.sha256] if c[2] == e.length]
        for src, off, _n in candidates:
            if copy_piece(src, off, e.length, dst) == e.sha256:
                break
            dst.seek(start)
            dst.truncate()
        else:
            raise VerificationError(
                [f"{plain(e.name)}: the bytes from {candidates[-1][0]} do not match the delta's sha256"]
            )


def inventory(name: str, releases: list[dict[str, Any]], archives: list[Path]) -> dict[str, Any]:
    """A host's inventory: which pieces its kept appliances hold (what a delta for it may leave out)."""
    content: set[str] = set()
    for a in archives:
        try:
            content |= {sha for n, _o, _l, sha in extents(a) if n != INDEX_EXTENT}
        except (FormatError, VerificationError, UsageError, OSError):
            continue
    return {"schema": INVENTORY_SCHEMA, "name": name, "releases": releases, "content": sorted(content)}


def write_inventory(data: dict[str, Any], out: Path) -> None:
    write_atomic(out, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")
