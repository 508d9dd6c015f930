"""The TUF client over an archive: python-tuf's Updater fed from the
archive's own ``metadata/`` members, offline, returning typed trusted metadata.

``trust_archive`` checks the archive's TUF repository in this order: which metadata members there
are, each read with its role's size bound (before it is parsed), the root chain and the canonical
form of every file, the anchor, then python-tuf's refresh (root rotation, timestamp, snapshot,
targets: signatures, versions, hashes, lengths, expiry). It never raises for what the archive holds:
the result is either ``TrustedMetadata`` or ``Untrusted`` with every problem found.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiron.archive.layout import METADATA_PREFIX, TUF_ROLE_FILES, Layout, root_member_version
from chiron.archive.reader import MemberSource, read_file
from chiron.core.clock import iso
from chiron.core.text import plain
from chiron.errors import EnvironmentProblem, FormatError
from chiron.trust.anchor import Anchor, HostTrust, RootFile, RootFingerprint
from chiron.trust.metadata import MAX_ROOT, check_root_chain, fingerprint

if TYPE_CHECKING:
    from tuf.ngclient import Updater

# The size bound of each role's file, applied before it is read and given to python-tuf's Updater.
METADATA_LIMITS = {"root": MAX_ROOT, "timestamp": 64 << 10, "snapshot": 16 << 20, "targets": 64 << 20}
MAX_ROOT_VERSIONS = 256  # python-tuf's max_root_rotations: a chain no Updater would follow is refused
TRUSTED_FILES = ("root.json", "timestamp.json", "snapshot.json", "targets.json")
_ROLES = ("root", "timestamp", "snapshot", "targets")


# ---------------------------------------------------------------- the result


@dataclass(frozen=True)
class RoleInfo:
    version: int
    expires: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "expires": iso(self.expires)}


@dataclass(frozen=True)
class TrustedTarget:
    """A target as the verified targets metadata signs it."""

    name: str
    length: int
    sha256: str
    custom: dict[str, Any]


@dataclass(frozen=True)
class TrustedMetadata:
    """What python-tuf trusts after the refresh: roles, targets, and the metadata files' bytes."""

    anchor: str
    root_fingerprint: str
    roles: dict[str, RoleInfo]
    targets: dict[str, TrustedTarget]
    files: dict[str, bytes] = field(repr=False)  # TRUSTED_FILES -> bytes, for the host to keep
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Untrusted:
    """Why the archive's metadata is not trusted; ``rollback`` when it is older than the host's."""

    problems: tuple[str, ...]
    anchor: str = ""
    root_fingerprint: str = ""
    rollback: bool = False


TOFU_NOTICE = (
    "trust on first use: the archive's own root metadata was trusted; pass --root FILE or "
    "--root-sha256 HEX obtained out of band to verify against an independent anchor"
)
TOFU_WARNING = (
    "NOT ANCHORED: nothing independent of this archive vouched for it; whoever built it could have "
    "signed it with keys of their own"
)


def trust_archive(
    reader: MemberSource, anchor: Anchor, *, reference_time: datetime | None = None
) -> TrustedMetadata | Untrusted:
    """Run the TUF client over the archive's metadata from ``anchor``."""
    roots, problems = _metadata_members(reader.layout)
    if problems:
        return Untrusted(tuple(problems))
    hashes, problems = _check_metadata_files(reader, roots)
    if problems:
        return Untrusted(tuple(problems))
    start = _start(reader, anchor, roots, hashes)
    if isinstance(start, Untrusted):
        return start
    if isinstance(anchor, HostTrust):
        reference_time = anchor.reference_time
    return _refresh(reader, anchor, start, roots, reference_time)


# ---------------------------------------------------------------- the steps


def _metadata_members(layout: Layout) -> tuple[list[str], list[str]]:
    """The root chain's members by version, and what the repository lacks."""
    names = {m.name for m in layout.members}
    roots = sorted((n for n in names if root_member_version(n) is not None), key=lambda n: root_member_version(n) or 0)
    missing = [f for f in TUF_ROLE_FILES if METADATA_PREFIX + f not in names]
    if not roots:
        missing.insert(0, "1.root.json")
    problems = [f"metadata: the archive lacks {', '.join(missing)}"] if missing else []
    if len(roots) > MAX_ROOT_VERSIONS:
        problems.append(f"metadata: {len(roots)} root versions, more than the {MAX_ROOT_VERSIONS} a client follows")
    return roots, problems


def _limit(name: str) -> int:
    role = "root" if root_member_version(name) is not None else name.split("/")[-1].split(".")[0]
    return METADATA_LIMITS.get(role, METADATA_LIMITS["targets"])  # a delegated role is bounded as targets


def _read(reader: MemberSource, name: str) -> bytes:
    """A metadata member, refused before it is read when it exceeds its role's size bound."""
    return reader.read(name, _limit(name))


def _check_metadata_files(reader: MemberSource, roots: list[str]) -> tuple[dict[str, str], list[str]]:
    """Each file bounded and in the canonical form chiron writes; the root chain walked one root at a
    time. Returns the sha256 of each root member (for ``--root-sha256``) and the problems."""
    from tuf.api.metadata import Metadata

    from chiron.trust.metadata import to_bytes

    problems: list[str] = []
    hashes: dict[str, str] = {}

    def chain() -> Iterator[bytes]:
        for name in roots:
            data = _read(reader, name)
            hashes[name] = hashlib.sha256(data).hexdigest()
            yield data

    try:
        problems += check_root_chain(chain())
        for name in [*roots, *(METADATA_PREFIX + f for f in TUF_ROLE_FILES)]:
            data = _read(reader, name)
            try:
                canonical = to_bytes(Metadata.from_bytes(data)) == data
            except Exception as exc:  # python-tuf raises many kinds for a malformed file
                problems.append(f"metadata {name}: cannot be parsed: {plain(str(exc))}")
                continue
            if not canonical:
                problems.append(f"metadata {name}: not in the canonical form chiron writes (edited?)")
    except FormatError as exc:  # over its size bound
        problems.append(f"metadata: {exc.message}")
    return hashes, problems


@dataclass(frozen=True)
class _Start:
    bootstrap: bytes | None  # None: the host's trusted root
    anchor: str
    root_fingerprint: str
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _start(reader: MemberSource, anchor: Anchor, roots: list[str], hashes: dict[str, str]) -> _Start | Untrusted:
    """Where the Updater starts: the anchor's root bytes, or the host's metadata."""
    if isinstance(anchor, HostTrust):
        label = "host trusted metadata" + (" (rollback allowed)" if anchor.allow_rollback else "")
        return _Start(None, label, "")
    if isinstance(anchor, RootFile):
        return _Start(anchor.data, "--root file", fingerprint(anchor.data))
    if isinstance(anchor, RootFingerprint):
        match = [n for n in roots if hashes.get(n) == anchor.sha256]
        if not match:
            return Untrusted(
                (
                    f"root: no root metadata in the archive has sha256 {anchor.sha256} "
                    "(wrong --root-sha256, or the archive was signed by other keys)",
                ),
                anchor="--root-sha256",
            )
        return _Start(_read(reader, match[0]), "--root-sha256", anchor.sha256)
    first = _read(reader, roots[0])
    return _Start(first, "embedded root (trust on first use)", fingerprint(first), (TOFU_NOTICE,), (TOFU_WARNING,))


def _updater_config() -> Any:
    from tuf.ngclient import UpdaterConfig

    return UpdaterConfig(
        max_root_rotations=MAX_ROOT_VERSIONS,
        root_max_length=METADATA_LIMITS["root"],
        timestamp_max_length=METADATA_LIMITS["timestamp"],
        snapshot_max_length=METADATA_LIMITS["snapshot"],
        targets_max_length=METADATA_LIMITS["targets"],
    )


def _refresh(
    reader: MemberSource, anchor: Anchor, start: _Start, roots: list[str], reference_time: datetime | None
) -> TrustedMetadata | Untrusted:
    """python-tuf's refresh in a scratch metadata directory; the trusted result read back from it."""
    with tempfile.TemporaryDirectory(prefix="chiron-verify-") as md_dir:
        if isinstance(anchor, HostTrust):
            _copy_host_metadata(anchor, Path(md_dir))
        failure = _run(reader, md_dir, start.bootstrap, reference_time)
        if failure is not None:
            return _untrusted(start, *(_reused_timestamp(reader, anchor) or failure))
        files = {name: Path(md_dir, name).read_bytes() for name in TRUSTED_FILES}
    return _trusted(reader, start, roots, files)


def _reused_timestamp(reader: MemberSource, anchor: Anchor) -> tuple[str, bool] | None:
    """python-tuf keeps its trusted timestamp when the archive's has the same version, then fails on a
    snapshot that no longer matches it (a hash mismatch): name that cause, a reused version number."""
    from tuf.api.metadata import Metadata

    if not isinstance(anchor, HostTrust) or anchor.allow_rollback:
        return None
    try:
        mine = read_file(anchor.metadata_dir / "timestamp.json", METADATA_LIMITS["timestamp"], "trusted metadata")
        theirs = _read(reader, METADATA_PREFIX + "timestamp.json")
        version = Metadata.from_bytes(theirs).signed.version
        if mine == theirs or Metadata.from_bytes(mine).signed.version != version:
            return None
    except Exception:  # unreadable either way: the refresh's own problem stands
        return None
    return (
        f"metadata: timestamp version {version} is what the host already trusts, "
        "but this archive's timestamp differs (re-signed with a reused version number)",
        True,
    )


def _copy_host_metadata(host: HostTrust, md_dir: Path) -> None:
    """The host's trusted files into the scratch directory (the root alone to allow a rollback)."""
    for name in ("root.json",) if host.allow_rollback else TRUSTED_FILES:
        src = host.metadata_dir / name
        if src.exists():
            limit = METADATA_LIMITS[name.removesuffix(".json")]
            (md_dir / name).write_bytes(read_file(src, limit, "trusted metadata"))


def _run(reader: MemberSource, md_dir: str, bootstrap: bytes | None, when: datetime | None) -> tuple[str, bool] | None:
    """Start python-tuf's Updater (from ``bootstrap``, else the root in ``md_dir``) and refresh; a
    failure as (problem, whether it is a rollback), or None."""
    from tuf.api import exceptions as tuf_exc
    from tuf.ngclient import Updater

    from chiron.trust.fetcher import ArchiveFetcher

    fetcher = ArchiveFetcher(reader, _limit)
    try:
        updater = Updater(
            metadata_dir=md_dir,
            metadata_base_url=fetcher.BASE,
            fetcher=fetcher,
            config=_updater_config(),
            bootstrap=bootstrap,
        )
        if when is not None:
            _set_reference_time(updater, when)
        updater.refresh()
    except tuf_exc.ExpiredMetadataError as exc:
        return f"metadata: expired: {plain(str(exc))} (build a new appliance, or check this host's clock)", False
    except tuf_exc.UnsignedMetadataError as exc:
        return f"metadata: signature check failed: {plain(str(exc))} (signed by a key the root does not trust)", False
    except tuf_exc.BadVersionNumberError as exc:
        return (
            f"metadata: rollback refused: {plain(str(exc))} (this archive is older than what the host already trusts)",
            True,
        )
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError, ValueError) as exc:
        return f"metadata: {type(exc).__name__}: {plain(str(exc))}", False
    return None


def _untrusted(start: _Start, problem: str, rollback: bool = False) -> Untrusted:
    return Untrusted((problem,), start.anchor, start.root_fingerprint, rollback)


def _trusted(
    reader: MemberSource, start: _Start, roots: list[str], files: dict[str, bytes]
) -> TrustedMetadata | Untrusted:
    """The trusted metadata, after two checks python-tuf leaves to its caller."""
    from tuf.api.metadata import Metadata

    md: dict[str, Metadata[Any]] = {role: Metadata.from_bytes(files[f"{role}.json"]) for role in _ROLES}
    if files["timestamp.json"] != _read(reader, METADATA_PREFIX + "timestamp.json"):
        # python-tuf keeps its trusted timestamp when the new one has the same version.
        return _untrusted(
            start,
            f"metadata: timestamp version {md['timestamp'].signed.version} is what the host already trusts, "
            "but this archive's timestamp differs (re-signed with a reused version number)",
            rollback=True,
        )
    newest = roots[-1]
    if md["root"].signed.version < (root_member_version(newest) or 0):
        return _untrusted(start, f"root: {newest} was not reached from the trust anchor")
    targets = {
        name: TrustedTarget(name, tf.length, str(tf.hashes.get("sha256", "")), dict(tf.custom or {}))
        for name, tf in md["targets"].signed.targets.items()
    }
    return TrustedMetadata(
        anchor=start.anchor,
        root_fingerprint=start.root_fingerprint,
        roles={role: RoleInfo(m.signed.version, m.signed.expires) for role, m in md.items()},
        targets=targets,
        files=files,
        notices=start.notices,
        warnings=start.warnings,
    )


def _set_reference_time(updater: Updater, when: datetime) -> None:
    """Make python-tuf check expiry against ``when`` (the host's time floor) instead of the clock.

    python-tuf has no public hook for this (theupdateframework/python-tuf#2359); the attribute is
    checked so that a python-tuf that renames it fails loudly instead of silently using the clock.
    """
    trusted_set = getattr(updater, "_trusted_set", None)
    if trusted_set is None or not hasattr(trusted_set, "reference_time"):
        raise EnvironmentProblem("this python-tuf has no reference_time: cannot apply the host's time floor")
    trusted_set.reference_time = when


__all__ = [
    "METADATA_LIMITS",
    "TRUSTED_FILES",
    "RoleInfo",
    "TrustedMetadata",
    "TrustedTarget",
    "Untrusted",
    "trust_archive",
]
