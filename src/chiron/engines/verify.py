"""Verify an appliance: the TUF chain through python-tuf's Updater, then every byte of the file.

Order: structure (footer, index, tiling, tool zip), the TUF client from the anchor (root chain,
timestamp -> snapshot -> targets: signatures, versions, expiry; trust/client.py), every region
against a signed target of the same kind, and finally a parallel sha256 of every region. Every
finding names the member or role and the reason (names escaped: they come from the archive);
nothing is extracted or copied, whatever the archive's size.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chiron.archive.layout import TOOL_MEMBERS_TARGET, TOOL_TARGET, Region
from chiron.archive.manifest import MANIFEST, MAX_MANIFEST, parse_manifest
from chiron.archive.reader import ArchiveReader, sha256_range
from chiron.archive.toolzip import ZipEntry, check_zip, diagnose_tool
from chiron.archive.volume import read_header
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.text import plain
from chiron.engines.coverage import check_coverage, signed_pieces
from chiron.errors import FormatError, UsageError, VerificationError
from chiron.trust.anchor import Anchor, HostTrust, anchor_from_options
from chiron.trust.client import TRUSTED_FILES, TrustedMetadata, TrustedTarget, Untrusted, trust_archive

__all__ = [
    "TRUSTED_FILES",
    "HostTrust",
    "TrustedTarget",
    "VerifiedAppliance",
    "VerifyReport",
    "verified",
    "verify",
]


@dataclass
class VerifyReport:
    """The outcome of a verification, as printed by ``verify --json``."""

    path: str
    ok: bool = False
    size: int = 0
    members: int = 0
    targets: int = 0
    bytes_hashed: int = 0
    trust_anchor: str = ""
    root_fingerprint: str = ""
    name: str | None = None
    version: str | None = None
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rollback: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    volume: dict[str, Any] | None = None  # what a volume says of itself (engines/media), None for an appliance
    trusted: dict[str, bytes] = field(default_factory=dict, repr=False)
    targets_meta: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    appliance: VerifiedAppliance | None = field(default=None, repr=False)  # open only inside verified()

    @property
    def verified(self) -> VerifiedAppliance:
        """The open, verified appliance (inside ``verified()`` and only when the report is ok)."""
        if self.appliance is None:
            raise VerificationError(self.problems or [f"{self.path}: not verified"])
        return self.appliance

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.verify/1",
            "path": self.path,
            "ok": self.ok,
            "size": self.size,
            "members": self.members,
            "targets": self.targets,
            "bytes_hashed": self.bytes_hashed,
            "trust_anchor": self.trust_anchor,
            "root_fingerprint": self.root_fingerprint,
            "appliance": {"name": self.name, "version": self.version},
            "roles": self.roles,
            "problems": self.problems,
            "notices": self.notices,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            "volume": self.volume,
        }

    def record_trust(self, result: TrustedMetadata | Untrusted) -> None:
        """What the TUF client decided: the anchor, and the trusted roles and targets or the problems."""
        self.trust_anchor = result.anchor
        self.root_fingerprint = result.root_fingerprint
        if isinstance(result, Untrusted):
            self.problems += result.problems
            self.rollback = result.rollback
            return
        self.notices += result.notices
        self.warnings += result.warnings
        self.roles = {role: info.as_dict() for role, info in result.roles.items()}
        self.trusted = dict(result.files)
        self.targets = len(result.targets)
        self.targets_meta = {
            t.name: {"length": t.length, "sha256": t.sha256, "custom": t.custom} for t in result.targets.values()
        }


class VerifiedAppliance:
    """A verified appliance, still open: every read goes through the archive reader's checked reads
    against the signed targets, so bytes changed on disk after verification are never used."""

    def __init__(self, reader: ArchiveReader, targets: dict[str, TrustedTarget], manifest: dict[str, Any]) -> None:
        self.reader = reader
        self.path = reader.path
        self.layout = reader.layout
        self.manifest = manifest
        self.targets = targets

    def target(self, name: str) -> TrustedTarget:
        try:
            return self.targets[name]
        except KeyError:
            raise VerificationError([f"member {plain(name)}: not signed by this appliance's targets"]) from None

    def read(self, name: str) -> bytes:
        """A signed member's bytes, re-hashed as they are read."""
        return self.reader.read_checked(name, self.target(name).sha256)

    def copy(self, name: str, dest: Path, prefix: bytes = b"") -> None:
        """Copy a signed member to ``dest`` (after ``prefix``), re-hashed as it is copied."""
        self.reader.copy_checked(name, self.target(name).sha256, dest, prefix)


@contextlib.contextmanager
def verified(
    path: Path,
    *,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    anchor: Anchor | None = None,
    show_progress: bool = False,
    workers: int | None = None,
    host: HostTrust | None = None,
    reference_time: datetime | None = None,
) -> Iterator[VerifyReport]:
    """Verify ``path`` and keep it open while the caller reads it: when the report is ok,
    ``report.appliance`` is the verified handle (closed when the block ends).

    The anchor is ``anchor``, else ``host``, else the one ``root_file``/``root_sha256`` name, else
    trust on first use (which the report says plainly).
    """
    started = time.monotonic()
    report = VerifyReport(path=str(path))
    if anchor is None:
        anchor = host if host is not None else anchor_from_options(root_file, root_sha256)
    _refuse_delta(path)
    _refuse_volume(path)
    reader: ArchiveReader | None = None
    trusted: TrustedMetadata | None = None
    try:
        with _telemetry.span("chiron.verify", path=str(path), bytes=report.size) as sp:
            try:
                reader = ArchiveReader(path, lenient=True)
            except FormatError as exc:
                report.problems.append(f"layout: {exc}")
            else:
                trusted = _verify(reader, report, anchor, reference_time, show_progress, workers)
            report.ok = not report.problems
            report.seconds = time.monotonic() - started
            _telemetry.set_attr(sp, ok=report.ok, members=report.members, bytes_hashed=report.bytes_hashed)
            _telemetry.count("chiron.verify.bytes", report.bytes_hashed, "By", ok=report.ok)
            _telemetry.observe("chiron.verify.duration", report.seconds, ok=report.ok)
        if report.ok and reader is not None and trusted is not None:
            report.appliance = VerifiedAppliance(reader, trusted.targets, report.manifest)
        yield report
    finally:
        report.appliance = None
        if reader is not None:
            reader.close()


def verify(
    path: Path,
    *,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    anchor: Anchor | None = None,
    show_progress: bool = False,
    workers: int | None = None,
    host: HostTrust | None = None,
    reference_time: datetime | None = None,
) -> VerifyReport:
    """Verify ``path``; the report's ``ok`` says whether it passed and ``problems`` why not."""
    with verified(
        path,
        root_file=root_file,
        root_sha256=root_sha256,
        anchor=anchor,
        show_progress=show_progress,
        workers=workers,
        host=host,
        reference_time=reference_time,
    ) as report:
        return report


def _refuse_delta(path: Path) -> None:
    """A delta is verified when a host rebuilds the appliance from it, not here (and a FIFO or a
    device is refused before anything blocks on it)."""
    from chiron.archive.delta import is_delta

    if is_delta(path):
        raise UsageError(
            f"{path} is a chiron delta, not a whole appliance: it is verified when a host rebuilds it",
            hint=f"on a host that runs an earlier release: PREFIX/bin/chiron upgrade {path} --prefix PREFIX",
        )


def _refuse_volume(path: Path) -> None:
    """A volume is checked alone by ``chiron verify`` (engines/media); as an appliance it must be
    joined first."""
    try:
        header = read_header(path)
    except FormatError:
        return  # a damaged volume header: the layout check below names what is wrong with the file
    if header is not None:
        raise UsageError(
            f"{path} is volume {header.number} of {header.count} of {header.label}, not a whole appliance",
            hint=f"check it alone with chiron verify {path}; join the volumes (chiron join DIR -o FILE) to use it",
        )


def _verify(
    reader: ArchiveReader,
    report: VerifyReport,
    anchor: Anchor,
    reference_time: datetime | None,
    show_progress: bool,
    workers: int | None,
) -> TrustedMetadata | None:
    """The steps, each only when the one before found nothing: structure, trust, coverage, hashes."""
    report.size = reader.size
    report.members = len(reader.layout.members)
    entries = _check_structure(reader, report)
    if report.problems:
        return None
    result = trust_archive(reader, anchor, reference_time=reference_time)
    report.record_trust(result)
    if isinstance(result, Untrusted):
        return None
    todo = _check_coverage(reader, result, report)
    changed = _check_hashes(reader, todo, result, report, show_progress, workers)
    if TOOL_TARGET in changed and TOOL_MEMBERS_TARGET in todo and TOOL_MEMBERS_TARGET not in changed:
        signed_list = reader.read(TOOL_MEMBERS_TARGET, MAX_MANIFEST)
        report.problems += diagnose_tool(reader.fd, entries, signed_list)
    _read_manifest(reader, report)
    return result


def _check_structure(reader: ArchiveReader, report: VerifyReport) -> list[ZipEntry]:
    """Tiling (found when the reader opened) and the strict walk of the tool zip."""
    report.problems += reader.problems
    try:
        entries, problems = check_zip(reader.fd, reader.layout)
    except FormatError as exc:
        entries, problems = [], [f"tool zip: {exc}"]
    report.problems += problems
    return entries


def _check_coverage(reader: ArchiveReader, trusted: TrustedMetadata, report: VerifyReport) -> dict[str, Region]:
    """Every signed target is in the archive, and every region but the TUF metadata is a signed target
    of its own kind and length. Returns the regions to hash, by name."""
    todo, problems = check_coverage(reader.layout, trusted.targets)
    report.problems += problems
    return todo


def _check_hashes(
    reader: ArchiveReader,
    todo: dict[str, Region],
    trusted: TrustedMetadata,
    report: VerifyReport,
    show_progress: bool,
    workers: int | None,
) -> set[str]:
    """sha256 every region to check on all cores; the names that differ (or whose pieces are
    malformed), each also reported, plus those already found of the wrong length."""
    wrong = {r.name for r in reader.layout.spans() if r.kind != "metadata" and r.name not in todo}
    mismatched = _hash_regions(reader.fd, todo, trusted.targets, report, show_progress, workers)
    for name in sorted(mismatched):
        report.problems.append(f"member {plain(name)}: sha256 does not match the signed targets (modified)")
    return mismatched | wrong


def _hash_regions(
    fd: int,
    regions: dict[str, Region],
    targets: dict[str, TrustedTarget],
    report: VerifyReport,
    show_progress: bool,
    workers: int | None,
) -> set[str]:
    """sha256 every region on all cores (hashlib releases the GIL); return the names that differ.

    A member with signed piece hashes is checked piece by piece, so even one huge member keeps
    every core busy; every byte is still covered by a signed hash.
    """
    total = sum(r.length for r in regions.values())
    tasks: list[tuple[str, int, int, str]] = []  # name, offset, length, expected sha256
    bad: set[str] = set()
    for name, r in regions.items():
        pieces = signed_pieces(targets[name], r.length)
        if pieces is None:
            bad.add(name)
        elif pieces:
            size = int(targets[name].custom["pieces"]["size"])
            tasks += [(name, r.offset + i * size, min(size, r.length - i * size), d) for i, d in enumerate(pieces)]
        else:
            tasks.append((name, r.offset, r.length, targets[name].sha256))
    # Largest first so one big task does not start last and leave the other cores idle.
    tasks.sort(key=lambda t: -t[2])
    with _progress.bar(total, "verifying", enabled=show_progress) as bar:

        def one(task: tuple[str, int, int, str]) -> tuple[str, bool]:
            name, offset, length, expected = task
            return name, sha256_range(fd, offset, length, bar.advance) == expected

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
            bad |= {name for name, ok in pool.map(one, tasks) if not ok}
    report.bytes_hashed = total
    return bad


def _read_manifest(reader: ArchiveReader, report: VerifyReport) -> None:
    if not reader.has(MANIFEST):
        return
    try:
        manifest = parse_manifest(reader.read(MANIFEST, MAX_MANIFEST), f"member {MANIFEST}")
    except FormatError as exc:
        report.problems.append(exc.message)
        return
    report.manifest = manifest.raw
    report.name, report.version = manifest.name, manifest.version
