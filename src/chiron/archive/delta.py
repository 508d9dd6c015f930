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
from typing import Any

from chiron.archive.layout import METADATA_PREFIX
from chiron.archive.reader import read_layout
from chiron.core.fs import sha256_file, write_atomic
from chiron.core.text import canonical_json
from chiron.errors import FormatError, Refused, UsageError, VerificationError

FORMAT = "chiron-delta/1"
INVENTORY_SCHEMA = "chiron.inventory/1"
MAGIC = b"CHIRONDL"
HEAD = struct.Struct("<8sQ")
INDEX_EXTENT = "_archive/index"
MAX_HEADER = 16 << 20  # ~90,000 extents; a bound on what parsing a header can cost
CHUNK = 1 << 20


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

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def is_delta(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _targets(archive: Path) -> dict[str, str]:
    """Target name -> sha256 from an archive's targets metadata (not verified: hashes are re-checked)."""
    from tuf.api.metadata import Metadata

    layout = read_layout(archive)
    m = layout.member(f"{METADATA_PREFIX}targets.json")
    if m is None:
        raise UsageError(f"{archive}: has no {METADATA_PREFIX}targets.json")
    with archive.open("rb") as f:
        md = Metadata.from_bytes(os.pread(f.fileno(), m.length, m.offset))
    return {name: tf.hashes["sha256"] for name, tf in md.signed.targets.items()}  # type: ignore[attr-defined]


def base_content(base: Path) -> set[str]:
    """The sha256 of every piece a base provides: an appliance's targets, or an inventory's content."""
    if not base.is_file():
        raise UsageError(f"{base}: no such file (give an older appliance or an inventory from chiron inventory)")
    with base.open("rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        try:
            inv = json.loads(base.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{base}: not an inventory (invalid JSON: {exc})") from None
        if (
            not isinstance(inv, dict)
            or inv.get("schema") != INVENTORY_SCHEMA
            or not isinstance(inv.get("content"), list)
        ):
            raise UsageError(f"{base}: not a {INVENTORY_SCHEMA} file (from chiron inventory)")
        return {str(c) for c in inv["content"]}
    try:
        # Every region, including metadata files that are not targets (the root chain rarely changes).
        return {sha for name, _off, _len, sha in extents(base) if name != INDEX_EXTENT}
    except FormatError as exc:
        raise UsageError(f"{base}: neither an appliance nor an inventory ({exc})") from None


def extents(archive: Path) -> list[tuple[str, int, int, str]]:
    """(name, offset, length, sha256) of every region of the full file, in file order.

    Targets take their hash from the targets metadata; the metadata files and the index (not targets
    themselves, and small) are hashed here.
    """
    layout = read_layout(archive)
    shas = _targets(archive)
    regions = [(name, off, length) for name, (off, length) in layout.regions().items()]
    regions.append((INDEX_EXTENT, layout.index_offset, layout.zip_offset - layout.index_offset))
    regions.sort(key=lambda r: r[1])
    out = []
    pos = 0
    with archive.open("rb") as f:
        for name, off, length in regions:
            if off != pos:
                raise VerificationError([f"{archive}: region {name} does not start where the previous one ends"])
            sha = shas.get(name) or hashlib.sha256(os.pread(f.fileno(), length, off)).hexdigest()
            out.append((name, off, length, sha))
            pos += length
    if pos != layout.size:
        raise VerificationError([f"{archive}: its regions do not cover the file"])
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
    name: str | None = None
    version: str | None = None
    whole = hashlib.sha256()
    with new.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            whole.update(chunk)
    entries: list[dict[str, Any]] = []
    for rname, _off, length, sha in regions:
        # The shebang and the index are tiny and always carried; metadata changes with every version.
        carried = rname == INDEX_EXTENT or sha not in have
        entries.append({"name": rname, "length": length, "sha256": sha, "carried": carried})
    layout = read_layout(new)
    with new.open("rb") as f:
        if (m := layout.member("appliance.json")) is not None:
            manifest = json.loads(os.pread(f.fileno(), m.length, m.offset))
            name, version = manifest.get("name"), manifest.get("version")
    header = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "size": layout.size,
        "sha256": whole.hexdigest(),
        "extents": entries,
    }
    raw = canonical_json(header)
    tmp = out.with_name(f".{out.name}.tmp")
    with new.open("rb") as src, tmp.open("wb") as dst:
        dst.write(HEAD.pack(MAGIC, len(raw)))
        dst.write(raw)
        for (_n, off, length, _s), e in zip(regions, entries, strict=True):
            if e["carried"]:
                src.seek(off)
                left = length
                while left:
                    chunk = src.read(min(left, CHUNK))
                    dst.write(chunk)
                    left -= len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, out)
    carried_bytes = sum(int(e["length"]) for e in entries if e["carried"])
    return Made(out, out.stat().st_size, carried_bytes, layout.size - carried_bytes)


def read(path: Path) -> Delta:
    """Parse a delta's header strictly; every count and length must add up to the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEAD.size)
        if len(head) != HEAD.size or head[:8] != MAGIC:
            raise UsageError(f"{path}: not a chiron delta")
        _magic, hlen = HEAD.unpack(head)
        if hlen > MAX_HEADER or HEAD.size + hlen > size:
            raise VerificationError([f"{path}: delta header length {hlen} is impossible for a {size}-byte file"])
        raw = f.read(hlen)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} header")
        if not isinstance(header.get("extents"), list) or not isinstance(header.get("sha256"), str):
            raise ValueError("no extents or sha256")
        extents = tuple(
            Extent(str(e["name"]), int(e["length"]), str(e["sha256"]), bool(e["carried"])) for e in header["extents"]
        )
        total = int(header["size"])
        if any(e.length < 0 or len(e.sha256) != 64 for e in extents) or sum(e.length for e in extents) != total:
            raise ValueError("extent lengths do not add up to the appliance size")
        if len({e.name for e in extents}) != len(extents):
            raise ValueError("an extent is listed twice")
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, json.JSONDecodeError) as exc:
        raise VerificationError([f"{path}: malformed delta header: {exc}"]) from None
    data_offset = HEAD.size + hlen
    if data_offset + sum(e.length for e in extents if e.carried) != size:
        raise VerificationError([f"{path}: the carried bytes do not match the header (truncated or padded file)"])
    return Delta(path, header, extents, data_offset)


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


def copy_piece(src: Path, off: int, length: int, dst: Any) -> str:
    """Append ``length`` bytes of ``src`` at ``off`` to ``dst``; their sha256."""
    h = hashlib.sha256()
    with src.open("rb") as f:
        f.seek(off)
        left = length
        while left:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                break
            h.update(chunk)
            dst.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


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
        names = ", ".join(e.name for e in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise Refused(
            f"{delta_path}: this host does not hold {len(missing)} piece(s) the delta builds on: {names}",
            hint="carry the full appliance instead, or a delta made from this host's inventory (chiron inventory)",
        )
    # The header is not trusted: bound what it can make the host write before anything is written.
    bound = d.size + sum(p.stat().st_size for p in sources)
    total = int(d.header["size"])
    if total > bound:
        raise VerificationError(
            [f"{delta_path}: claims a {total}-byte appliance, more than the delta and the host's appliances hold"]
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < total:
        raise Refused(
            f"not enough free space on {out.parent} to rebuild {delta_path.name}: it needs {total >> 20} MiB, "
            f"{free >> 20} MiB are free",
            hint="free space on the state directory's filesystem; nothing was changed",
        )
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("wb") as dst:
            pos = d.data_offset
            for e in d.extents:
                start = dst.tell()
                if e.carried:
                    candidates = [(delta_path, pos, e.length)]
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
                        [f"{e.name}: the bytes from {candidates[-1][0]} do not match the delta's sha256"]
                    )
            dst.flush()
            os.fsync(dst.fileno())
        if sha256_file(tmp) != d.header["sha256"]:
            raise VerificationError([f"{delta_path}: the rebuilt appliance does not hash to the delta's sha256"])
        os.chmod(tmp, 0o755)  # noqa: S103 - an appliance is executable, like the original
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return d


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
