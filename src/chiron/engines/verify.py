"""Verify an appliance: the TUF chain through python-tuf's Updater, then every byte of the file.

Order: structure (footer, index, tiling, tool zip), trust anchor and root chain, TUF refresh
(timestamp -> snapshot -> targets, signatures, versions, expiry), the member list against the
signed targets, and finally a parallel sha256 of every region. Every finding names the member or
role and the reason; nothing is extracted or copied, whatever the archive's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chiron.archive.layout import CHUNK, METADATA_PREFIX, TOOL_MEMBERS_TARGET, TOOL_TARGET, Layout
from chiron.archive.reader import ArchiveReader, check_tiling, open_regular
from chiron.archive.toolzip import ZipEntry, check_zip, read_zip_member
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.errors import FormatError, UsageError, VerificationError
from chiron.trust.client import ArchiveFetcher

_TUF_ROLE_FILES = ("timestamp.json", "snapshot.json", "targets.json")
TRUSTED_FILES = ("root.json", "timestamp.json", "snapshot.json", "targets.json")


@dataclass(frozen=True)
class HostTrust:
    """Verify against a host's trusted metadata instead of a root anchor (install/upgrade).

    The directory is copied, never modified. ``reference_time`` replaces the local clock for expiry
    checks (the host's persisted time floor). ``allow_rollback`` starts from the trusted root only,
    so older timestamp/snapshot/targets versions are accepted (an explicit operator downgrade).
    """

    metadata_dir: Path
    reference_time: datetime | None = None
    allow_rollback: bool = False


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
    seconds: float = 0.0
    rollback: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
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
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TrustedTarget:
    """A target as the verified targets metadata signs it."""

    name: str
    length: int
    sha256: str
    custom: dict[str, Any]


class VerifiedAppliance:
    """A verified appliance, still open: every read goes through the archive reader's checked reads
    against the signed targets, so bytes changed on disk after verification are never used."""

    def __init__(self, reader: ArchiveReader, targets: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> None:
        self.reader = reader
        self.path = reader.path
        self.layout = reader.layout
        self.manifest = manifest
        self.targets = {
            name: TrustedTarget(name, int(t["length"]), str(t["sha256"]), dict(t.get("custom") or {}))
            for name, t in targets.items()
        }

    def target(self, name: str) -> TrustedTarget:
        try:
            return self.targets[name]
        except KeyError:
            raise VerificationError([f"member {name}: not signed by this appliance's targets"]) from None

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
    show_progress: bool = False,
    workers: int | None = None,
    host: HostTrust | None = None,
    reference_time: datetime | None = None,
) -> Iterator[VerifyReport]:
    """Verify ``path`` and keep it open while the caller reads it: when the report is ok,
    ``report.appliance`` is the verified handle (closed when the block ends)."""
    started = time.monotonic()
    report = VerifyReport(path=str(path))
    anchor = _read_anchor(root_file, root_sha256)
    fd = open_regular(path)  # a FIFO or a device is refused here, before anything blocks on it
    os.close(fd)
    report.size = path.stat().st_size
    from chiron.archive.delta import is_delta

    if is_delta(path):
        raise UsageError(
            f"{path} is a chiron delta, not a whole appliance: it is verified when a host rebuilds it",
            hint=f"on a host that runs an earlier release: PREFIX/bin/chiron upgrade {path} --prefix PREFIX",
        )
    reader: ArchiveReader | None = None
    try:
        with _telemetry.span("chiron.verify", path=str(path), bytes=report.size) as sp:
            if host is None and reference_time is not None:
                host_or_time: HostTrust | datetime | None = reference_time
            else:
                host_or_time = host
            try:
                reader = ArchiveReader(path)
            except FormatError as exc:
                report.problems.append(f"layout: {exc}")
            else:
                report.size = reader.size
                _verify(reader, report, anchor, root_sha256, show_progress, workers, host_or_time)
            report.ok = not report.problems
            report.seconds = time.monotonic() - started
            _telemetry.set_attr(sp, ok=report.ok, members=report.members, bytes_hashed=report.bytes_hashed)
            _telemetry.count("chiron.verify.bytes", report.bytes_hashed, "By", ok=report.ok)
            _telemetry.observe("chiron.verify.duration", report.seconds, ok=report.ok)
        if report.ok and reader is not None:
            report.appliance = VerifiedAppliance(reader, report.targets_meta, report.manifest)
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
        show_progress=show_progress,
        workers=workers,
        host=host,
        reference_time=reference_time,
    ) as report:
        return report


def _read_anchor(root_file: Path | None, root_sha256: str | None) -> bytes | None:
    if root_file is not None and root_sha256 is not None:
        raise UsageError("give --root or --root-sha256, not both")
    if root_sha256 is not None:
        hexdigest = root_sha256.lower()
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise UsageError(f"--root-sha256: '{root_sha256}' is not 64 hexadecimal digits")
    if root_file is None:
        return None
    try:
        return root_file.read_bytes()
    except OSError as exc:
        raise UsageError(f"--root {root_file}: cannot read: {exc.strerror}") from None


def _verify(
    reader: ArchiveReader,
    report: VerifyReport,
    anchor: bytes | None,
    root_sha256: str | None,
    show_progress: bool,
    workers: int | None,
    host: HostTrust | datetime | None,
) -> None:
    layout = reader.layout
    fd = reader.fd
    report.members = len(layout.members)
    report.problems += check_tiling(layout)
    try:
        entries, zip_problems = check_zip(fd, layout)
    except FormatError as exc:
        entries, zip_problems = [], [f"tool zip: {exc}"]
    report.problems += zip_problems
    if report.problems:
        return
    targets = _check_tuf(reader, report, anchor, root_sha256, host)
    if targets is None:
        return
    report.targets_meta = targets
    signed_format = (targets.get(TOOL_TARGET, {}).get("custom") or {}).get("format")
    if signed_format != layout.tool_format:
        report.problems.append(
            f"index: tool_format {layout.tool_format!r} differs from the signed tool format {signed_format!r}"
        )
    report.targets = len(targets)
    regions = layout.regions()
    wrong_length: set[str] = set()
    for name in sorted(targets):
        if name not in regions:
            report.problems.append(f"member {name}: signed in targets but missing from the archive (removed?)")
    for name in sorted(regions):
        if name.startswith(METADATA_PREFIX):
            continue
        if name not in targets:
            report.problems.append(f"member {name}: not signed (unlisted member added to the archive?)")
        elif regions[name][1] != targets[name]["length"]:
            wrong_length.add(name)
            report.problems.append(
                f"member {name}: is {regions[name][1]} bytes, signed length is {targets[name]['length']}"
            )
    todo = {n: regions[n] for n in targets if n in regions and n not in wrong_length}
    mismatched = _hash_regions(fd, todo, targets, report, show_progress, workers)
    for name in sorted(mismatched):
        report.problems.append(f"member {name}: sha256 does not match the signed targets (modified)")
    changed = mismatched | wrong_length
    if TOOL_TARGET in changed and TOOL_MEMBERS_TARGET in todo and TOOL_MEMBERS_TARGET not in changed:
        report.problems += _diagnose_tool(fd, layout, entries)
    _read_manifest(fd, layout, report)


def _check_tuf(
    reader: ArchiveReader,
    report: VerifyReport,
    anchor: bytes | None,
    root_sha256: str | None,
    host_or_time: HostTrust | datetime | None,
) -> dict[str, dict[str, Any]] | None:
    """Run the TUF client over the archive's metadata; return the trusted targets, or None."""
    from tuf.api import exceptions as tuf_exc
    from tuf.api.metadata import Metadata
    from tuf.ngclient import Updater, UpdaterConfig

    from chiron.trust import metadata as _trust

    host = host_or_time if isinstance(host_or_time, HostTrust) else None
    ref = host.reference_time if host is not None else host_or_time
    regions = reader.layout.regions()
    meta_names = sorted(n for n in regions if n.startswith(METADATA_PREFIX))
    roots = sorted(
        (n for n in meta_names if n.removeprefix(METADATA_PREFIX).split(".")[0].isdigit()),
        key=lambda n: int(n.removeprefix(METADATA_PREFIX).split(".")[0]),
    )
    for n in meta_names:
        base = n.removeprefix(METADATA_PREFIX)
        if n not in roots and base not in _TUF_ROLE_FILES:
            report.problems.append(f"member {n}: is not part of the TUF repository")
        if n in roots and base != f"{base.split('.')[0]}.root.json":
            report.problems.append(f"member {n}: is not named N.root.json")
    missing = [f for f in _TUF_ROLE_FILES if f"{METADATA_PREFIX}{f}" not in regions]
    if not roots:
        missing.insert(0, "1.root.json")
    if missing:
        report.problems.append(f"metadata: the archive lacks {', '.join(missing)}")
    if report.problems:
        return None
    raw = {n: reader.read(n) for n in meta_names}
    chain = [raw[n] for n in roots]
    report.problems += _trust.check_root_chain(chain)
    for n, data in raw.items():
        try:
            if _trust.to_bytes(Metadata.from_bytes(data)) != data:
                report.problems.append(f"metadata {n}: not in the canonical form chiron writes (edited?)")
        except Exception as exc:
            report.problems.append(f"metadata {n}: cannot be parsed: {exc}")
    if report.problems:
        return None

    if host is not None:
        report.trust_anchor = "host trusted metadata" + (" (rollback allowed)" if host.allow_rollback else "")
    elif anchor is not None:
        report.trust_anchor = "--root file"
    elif root_sha256 is not None:
        match = [n for n in roots if hashlib.sha256(raw[n]).hexdigest() == root_sha256.lower()]
        if not match:
            report.problems.append(
                f"root: no root metadata in the archive has sha256 {root_sha256.lower()} "
                "(wrong --root-sha256, or the archive was signed by other keys)"
            )
            return None
        anchor = raw[match[0]]
        report.trust_anchor = "--root-sha256"
    else:
        anchor = chain[0]
        report.trust_anchor = "embedded root (trust on first use)"
        report.notices.append(
            "trust on first use: the archive's own root metadata was trusted; pass --root FILE or "
            "--root-sha256 HEX obtained out of band to verify against an independent anchor"
        )
    if anchor is not None:
        report.root_fingerprint = hashlib.sha256(anchor).hexdigest()

    fetcher = ArchiveFetcher(reader)
    config = UpdaterConfig(targets_max_length=64 << 20, snapshot_max_length=16 << 20)
    with tempfile.TemporaryDirectory(prefix="chiron-verify-") as md_dir:
        if host is not None:
            for name in ("root.json",) if host.allow_rollback else TRUSTED_FILES:
                src = host.metadata_dir / name
                if src.is_file():
                    shutil.copyfile(src, os.path.join(md_dir, name))
        try:
            updater = Updater(
                metadata_dir=md_dir,
                metadata_base_url=fetcher.BASE,
                fetcher=fetcher,
                config=config,
                bootstrap=anchor,
            )
            if isinstance(ref, datetime):
                _set_reference_time(updater, ref)
            updater.refresh()
        except tuf_exc.ExpiredMetadataError as exc:
            report.problems.append(f"metadata: expired: {exc} (build a new appliance, or check this host's clock)")
            return None
        except tuf_exc.UnsignedMetadataError as exc:
            report.problems.append(f"metadata: signature check failed: {exc} (signed by a key the root does not trust)")
            return None
        except tuf_exc.BadVersionNumberError as exc:
            report.rollback = True
            report.problems.append(
                f"metadata: rollback refused: {exc} (this archive is older than what the host already trusts)"
            )
            return None
        except tuf_exc.RepositoryError as exc:
            report.problems.append(f"metadata: {type(exc).__name__}: {exc}")
            return None
        except (tuf_exc.DownloadError, ValueError) as exc:
            report.problems.append(f"metadata: {type(exc).__name__}: {exc}")
            return None
        trusted: dict[str, Any] = {}
        for role in ("root", "timestamp", "snapshot", "targets"):
            with open(os.path.join(md_dir, f"{role}.json"), "rb") as f:
                report.trusted[f"{role}.json"] = f.read()
            md = Metadata.from_bytes(report.trusted[f"{role}.json"])
            trusted[role] = md
            report.roles[role] = {
                "version": md.signed.version,
                "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        if report.trusted["timestamp.json"] != raw[METADATA_PREFIX + "timestamp.json"]:
            # python-tuf keeps its trusted timestamp when the new one has the same version.
            report.rollback = True
            report.problems.append(
                f"metadata: timestamp version {trusted['timestamp'].signed.version} is what the host already trusts, "
                "but this archive's timestamp differs (re-signed with a reused version number)"
            )
            return None
        newest = roots[-1]
        if trusted["root"].signed.version < int(newest.removeprefix(METADATA_PREFIX).split(".")[0]):
            report.problems.append(f"root: {newest} was not reached from the trust anchor")
    return {
        name: {"length": tf.length, "sha256": tf.hashes.get("sha256", ""), "custom": tf.custom}
        for name, tf in trusted["targets"].signed.targets.items()
    }


def _set_reference_time(updater: Any, when: datetime) -> None:
    """Make python-tuf check expiry against ``when`` (the host's time floor) instead of the clock.

    python-tuf has no public hook for this (theupdateframework/python-tuf#2359); the attribute is
    checked so that a python-tuf that renames it fails loudly instead of silently using the clock.
    """
    trusted_set = getattr(updater, "_trusted_set", None)
    if trusted_set is None or not hasattr(trusted_set, "reference_time"):
        from chiron.errors import EnvironmentProblem

        raise EnvironmentProblem("this python-tuf has no reference_time: cannot apply the host's time floor")
    trusted_set.reference_time = when


def _pread(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset)


def _hash_regions(
    fd: int,
    regions: dict[str, tuple[int, int]],
    targets: dict[str, dict[str, Any]],
    report: VerifyReport,
    show_progress: bool,
    workers: int | None,
) -> set[str]:
    """sha256 every region on all cores (hashlib releases the GIL); return the names that differ.

    A member with signed piece hashes is checked piece by piece, so even one huge member keeps
    every core busy; every byte is still covered by a signed hash.
    """
    total = sum(length for _o, length in regions.values())
    tasks: list[tuple[str, int, int, str]] = []  # name, offset, length, expected sha256
    bad: set[str] = set()
    for name, (offset, length) in regions.items():
        pieces = _pieces(targets[name], length)
        if pieces is None:
            bad.add(name)
        elif pieces:
            size = targets[name]["custom"]["pieces"]["size"]
            tasks += [(name, offset + i * size, min(size, length - i * size), d) for i, d in enumerate(pieces)]
        else:
            tasks.append((name, offset, length, targets[name]["sha256"]))
    # Largest first so one big task does not start last and leave the other cores idle.
    tasks.sort(key=lambda t: -t[2])
    with _progress.bar(total, "verifying", enabled=show_progress) as bar:

        def one(task: tuple[str, int, int, str]) -> tuple[str, bool]:
            name, offset, length, expected = task
            return name, _sha256_range(fd, offset, length, bar.advance) == expected

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
            bad |= {name for name, ok in pool.map(one, tasks) if not ok}
    report.bytes_hashed = total
    return bad


def _pieces(target: dict[str, Any], length: int) -> list[str] | None:
    """The signed piece hashes of a target ([] if it has none; None if they are malformed)."""
    spec = (target.get("custom") or {}).get("pieces")
    if spec is None:
        return []
    try:
        size, digests = int(spec["size"]), list(spec["sha256"])
    except (KeyError, TypeError, ValueError):
        return None
    if size <= 0 or len(digests) != -(-length // size) or not all(isinstance(d, str) for d in digests):
        return None
    return digests


def _sha256_range(fd: int, offset: int, length: int, advance: Callable[[int], None]) -> str:
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK * 4, max(length, 1)))
    view = memoryview(buf)
    end = offset + length
    while offset < end:
        n = os.preadv(fd, [view[: min(len(buf), end - offset)]], offset)
        if n <= 0:
            break
        h.update(view[:n])
        offset += n
        advance(n)
    return h.hexdigest()


def _diagnose_tool(fd: int, layout: Layout, entries: list[ZipEntry]) -> list[str]:
    """The tool zip differs from the signed one: compare it with the signed member list to say how."""
    region = layout.regions()[TOOL_MEMBERS_TARGET]
    try:
        signed = {m["name"]: m for m in json.loads(_pread(fd, *region))}
    except (ValueError, KeyError, TypeError):
        return [f"member {TOOL_MEMBERS_TARGET}: is not a valid tool member list"]
    problems: list[str] = []
    files = {e.name: e for e in entries if not e.name.endswith("/")}
    for name in sorted(set(files) - set(signed)):
        problems.append(f"tool zip member {name}: not signed (added to the tool code)")
    for name in sorted(set(signed) - set(files)):
        problems.append(f"tool zip member {name}: signed but missing from the tool code (removed)")
    for name in sorted(set(files) & set(signed)):
        h = hashlib.sha256()
        try:
            for chunk in read_zip_member(fd, files[name]):
                h.update(chunk)
        except Exception:
            problems.append(f"tool zip member {name}: cannot be decompressed (modified)")
            continue
        if h.hexdigest() != signed[name]["sha256"]:
            problems.append(f"tool zip member {name}: content differs from the signed tool code (modified)")
    if not problems:
        problems.append("tool zip: headers or directory differ from the signed zip (member contents intact)")
    return problems


def _read_manifest(fd: int, layout: Layout, report: VerifyReport) -> None:
    region = layout.regions().get("appliance.json")
    if region is None:
        return
    try:
        manifest = json.loads(_pread(fd, *region))
        report.manifest = manifest
        report.name, report.version = manifest.get("name"), manifest.get("version")
    except ValueError:
        report.problems.append("member appliance.json: is not valid JSON")
