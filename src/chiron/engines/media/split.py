"""``chiron split``: cut an appliance (or a delta) into volumes no larger than a size, each of which
verifies alone, plus a plain-text manifest of their sizes and sha256 for guards and scanners.

An appliance's volumes end only where the plan allows (between signed units, or inside what every
volume carries), so they differ a little in size and none is larger than ``--size``. Split trusts
nothing it reads: the targets only place the cuts, and every volume is verified where it arrives.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive import delta as _delta
from chiron.archive.carried import carried_from
from chiron.archive.layout import METADATA_PREFIX
from chiron.archive.manifest import MANIFEST, parse_manifest
from chiron.archive.reader import ArchiveReader, open_regular
from chiron.archive.volume import (
    MAX_VOLUMES,
    MIN_SIZE,
    SUFFIX,
    Kind,
    VolumeHeader,
    manifest_text,
    read_header,
    safe_name,
    set_stem,
    volume_file,
)
from chiron.core import progress as _progress
from chiron.core.fs import WriteBehind, fsync_dir, temp_beside, write_atomic
from chiron.core.text import plain, printable
from chiron.engines.media.files import copy_signature, ensure_space, signature_beside
from chiron.engines.media.plan import Plan, opaque
from chiron.engines.verify import TrustedTarget
from chiron.errors import FormatError, UsageError, VerificationError
from chiron.trust.client import METADATA_LIMITS

CHUNK = 4 << 20
MAX_SIZE = 1 << 50
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``--size``: bytes, or a number with K, M, G or T (binary: ``4480M`` is 4480 MiB, as ``4480MiB``);
    with KB, MB, GB or TB decimal (``4700MB`` is 4,700,000,000 bytes)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or (not match.group(2) and match.group(3).lower() == "ib"):
        raise UsageError(
            f"--size: {printable(text)} is not a size (bytes, or a number with K, M, G, T, KB, MB, GB, TB)"
        )
    number, prefix, suffix = match.groups()
    unit = _UNITS[prefix.lower()]
    if prefix and suffix.lower() == "b":
        unit = 1000 ** (" kmgt".index(prefix.lower()))
    size = int(float(number) * unit) if "." in number and len(number) < 40 else int(number.split(".")[0]) * unit
    if size > MAX_SIZE:  # no medium holds more; also keeps an absurd number from overflowing a float
        raise UsageError(f"--size: {printable(text)} is more than any volume needs (at most 1P)")
    return size


@dataclass
class Source:
    """What is being split: its kind, names, the bytes every volume carries, and where cuts may go."""

    path: Path
    kind: Kind
    name: str | None
    version: str | None
    size: int
    carried: list[tuple[str, bytes]]
    plan: Plan


@dataclass
class SplitResult:
    source: Path
    kind: Kind
    name: str | None
    version: str | None
    size: int
    sha256: str
    max_size: int
    volumes: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None
    signature: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.split/1",
            "source": str(self.source),
            "kind": self.kind,
            "appliance": {"name": self.name, "version": self.version},
            "size": self.size,
            "sha256": self.sha256,
            "max_size": self.max_size,
            "volumes": self.volumes,
            "manifest": str(self.manifest),
            "signature": str(self.signature) if self.signature else None,
        }


def split(source: Path, out_dir: Path, max_size: int, *, show_progress: bool = False) -> SplitResult:
    """Write the volumes of ``source`` (an appliance or a delta) into ``out_dir``."""
    if max_size < MIN_SIZE:
        raise UsageError(f"--size {max_size}: volumes must be at least {MIN_SIZE} bytes (1 MiB)")
    src = _open_source(source)
    ranges = _ranges(src, max_size)
    stem = set_stem(src.name, src.version, src.kind, source.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    _refuse_leftovers(out_dir, stem)
    overhead = _overhead(src)
    ensure_space(out_dir, src.size + len(ranges) * overhead, f"the {len(ranges)} volumes of {source.name}")
    with ThreadPoolExecutor(max_workers=1) as pool:  # the second hash of every chunk, on the other core
        result = _write_set(src, ranges, max_size, stem, out_dir, pool, show_progress)
    fsync_dir(out_dir)
    return result


def _write_set(
    src: Source,
    ranges: list[tuple[int, int]],
    max_size: int,
    stem: str,
    out_dir: Path,
    pool: ThreadPoolExecutor,
    show_progress: bool,
) -> SplitResult:
    """Hash the ranges, then write every volume, the signature and the manifest (or nothing)."""
    source = src.path
    whole, data_shas = _hash_ranges(src, ranges, pool, show_progress)
    result = SplitResult(source, src.kind, src.name, src.version, src.size, whole, max_size)
    headers = [
        VolumeHeader(
            kind=src.kind,
            name=src.name,
            version=src.version,
            file=safe_name(source.name),
            size=src.size,
            sha256=whole,
            number=i + 1,
            count=len(ranges),
            offset=start,
            length=end - start,
            data_sha256=data_shas[i],
            carried=tuple((n, len(b)) for n, b in src.carried),
        )
        for i, (start, end) in enumerate(ranges)
    ]
    written: list[Path] = []
    try:
        with _progress.bar(src.size, f"writing volumes of {source.name}", enabled=show_progress) as bar:
            for h in headers:
                path = out_dir / volume_file(stem, h.number, h.count)
                size, sha = _write_volume(src, h, path, pool, bar.advance)
                written.append(path)
                result.volumes.append(
                    {"file": str(path), "number": h.number, "offset": h.offset, "length": h.length}
                    | {"size": size, "sha256": sha}
                )
        listed = [(Path(v["file"]).name, v["size"], v["sha256"]) for v in result.volumes]
        result.signature = copy_signature(signature_beside(source), out_dir / f"{stem}.sig")
        if result.signature is not None:
            listed.append((result.signature.name, *_file_digest(result.signature)))
        result.manifest = out_dir / f"{stem}.volumes.txt"
        write_atomic(result.manifest, manifest_text(headers[0], listed).encode())
    except BaseException:
        for path in written:  # a set without its manifest is a set half written
            path.unlink(missing_ok=True)
        raise
    return result


def _both(pool: ThreadPoolExecutor, first: Any, second: Any, chunk: bytes) -> None:
    """Two sha256 of the same bytes at one hash's speed: ``second`` on the pool's thread while
    ``first`` runs here (hashlib releases the GIL for buffers this large)."""
    pending = pool.submit(second.update, chunk)
    first.update(chunk)
    pending.result()


def _open_source(path: Path) -> Source:
    """The appliance or delta at ``path``, read (not verified) far enough to plan its volumes."""
    if _delta.is_delta(path):  # a missing file, a FIFO or a device is a UsageError here
        d = _delta.read(path)
        return Source(path, "delta", d.name, d.version, d.size, [], opaque(d.size))
    try:
        if read_header(path) is not None:
            raise UsageError(f"{path} is already a volume: split the appliance it came from")
    except FormatError:
        raise UsageError(f"{path} is a damaged volume: split the appliance it came from") from None
    try:
        reader = ArchiveReader(path)
    except FormatError as exc:
        raise VerificationError(
            [f"{path}: not an appliance chiron can split: {exc.message}"],
            hint=f"check it with chiron verify {path}",
        ) from None
    with reader:
        layout = reader.layout
        carried = carried_from(reader)
        plan = Plan.for_appliance(layout, _unverified_targets(reader))
        if plan.problems:
            raise VerificationError(
                [f"{path}: cannot be split: {p}" for p in plan.problems], hint=f"check it with chiron verify {path}"
            )
        manifest = parse_manifest(dict(carried)[MANIFEST]) if reader.has(MANIFEST) else None
    name, version = (manifest.name, manifest.version) if manifest else (None, None)
    return Source(path, "appliance", name, version, layout.size, carried, plan)


def _unverified_targets(reader: ArchiveReader) -> dict[str, TrustedTarget]:
    """The targets as targets.json lists them, not verified: they only decide where volumes may end
    (a volume cut by wrong ones fails verification where it arrives)."""
    from tuf.api.metadata import Metadata, Targets

    name = f"{METADATA_PREFIX}targets.json"
    try:
        md = Metadata[Targets].from_bytes(reader.read(name, METADATA_LIMITS["targets"]))
        return {
            str(n): TrustedTarget(str(n), tf.length, str(tf.hashes.get("sha256", "")), dict(tf.custom or {}))
            for n, tf in md.signed.targets.items()
        }
    except Exception as exc:  # python-tuf raises many kinds for a malformed file; a missing member too
        raise VerificationError(
            [f"{reader.path}: {name} cannot be read: {plain(str(exc))}"],
            hint=f"check it with chiron verify {reader.path}",
        ) from None


def _overhead(src: Source) -> int:
    """The most bytes a volume of ``src`` spends on its header and carried members."""
    biggest = VolumeHeader(
        kind=src.kind,
        name=src.name,
        version=src.version,
        file=safe_name(src.path.name),
        size=src.size,
        sha256="0" * 64,
        number=MAX_VOLUMES,
        count=MAX_VOLUMES,
        offset=src.size,
        length=src.size,
        data_sha256="0" * 64,
        carried=tuple((n, len(b)) for n, b in src.carried),
    )
    return len(biggest.encode()) + sum(len(b) for _n, b in src.carried)


def _ranges(src: Source, max_size: int) -> list[tuple[int, int]]:
    """The byte ranges of the volumes: each as long as fits, ending where the plan allows."""
    overhead = _overhead(src)
    room = max_size - overhead
    largest = src.plan.largest_uncut()
    smallest = overhead + (largest.length if largest else 1)
    if room < 1 or (largest is not None and largest.length > room):
        why = f"; {largest.describe()} is {largest.length} bytes and must be in one volume" if largest else ""
        raise UsageError(
            f"--size {max_size} is too small for {src.path.name}: each volume carries {overhead} bytes of header "
            f"and metadata{why}; use a --size of {smallest} or more"
        )
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < src.size:
        end = src.plan.cut(pos, pos + room)
        ranges.append((pos, end))
        pos = end
    if len(ranges) > MAX_VOLUMES:
        raise UsageError(
            f"--size {max_size} would make {len(ranges)} volumes, more than {MAX_VOLUMES}: choose a larger size"
        )
    return ranges


def _hash_ranges(
    src: Source, ranges: list[tuple[int, int]], pool: ThreadPoolExecutor, show_progress: bool
) -> tuple[str, list[str]]:
    """The whole file's sha256 and each range's, in one read (every header names both)."""
    whole = hashlib.sha256()
    shas: list[str] = []
    fd = open_regular(src.path)
    try:
        with _progress.bar(src.size, f"hashing {src.path.name}", enabled=show_progress) as bar:
            for start, end in ranges:
                h = hashlib.sha256()
                for chunk in _chunks(fd, start, end):
                    _both(pool, h, whole, chunk)
                    bar.advance(len(chunk))
                shas.append(h.hexdigest())
    finally:
        os.close(fd)
    return whole.hexdigest(), shas


def _chunks(fd: int, start: int, end: int) -> Any:
    while start < end:
        chunk = os.pread(fd, min(CHUNK, end - start), start)
        if not chunk:
            raise VerificationError([f"the file ends early at offset {start} (it changed while being split)"])
        yield chunk
        start += len(chunk)


def _write_volume(src: Source, h: VolumeHeader, path: Path, pool: ThreadPoolExecutor, advance: Any) -> tuple[int, str]:
    """Write one volume through a temporary file; its size and sha256. The range is hashed again as
    it is copied: a source that changed since it was hashed leaves no volume."""
    whole_file, data = hashlib.sha256(), hashlib.sha256()
    size = 0
    fd = open_regular(src.path)
    try:
        with temp_beside(path, 0o644) as (out, tmp), os.fdopen(os.dup(out), "wb") as f:
            behind = WriteBehind(out, 0)  # a volume is gigabytes: on the disk as it goes, not all at the fsync
            for part in (h.encode(), *(b for _n, b in src.carried)):
                f.write(part)
                whole_file.update(part)
                size += len(part)
            for chunk in _chunks(fd, h.offset, h.end):
                f.write(chunk)
                _both(pool, whole_file, data, chunk)
                size += len(chunk)
                advance(len(chunk))
                behind.wrote(size)
            if data.hexdigest() != h.data_sha256:
                raise VerificationError([f"{src.path}: changed while being split (bytes {h.offset}-{h.end})"])
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        os.close(fd)
    return size, whole_file.hexdigest()


def _file_digest(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def _refuse_leftovers(out_dir: Path, stem: str) -> None:
    """A directory that already holds volumes of this appliance would mix two splits."""
    with contextlib.suppress(OSError):
        old = sorted(p.name for p in out_dir.glob(f"{stem}.part*{SUFFIX}"))
        if old or (out_dir / f"{stem}.volumes.txt").exists():
            shown = old[0] if old else f"{stem}.volumes.txt"
            raise UsageError(
                f"{out_dir} already holds volumes of {stem} ({shown}): splitting again there would mix two sets",
                hint="choose an empty directory, or remove the old volumes first",
            )
