"""Read one appliance into what a report shows.

Verified (the default): the appliance is verified first (``engines.verify.verified``) and every member
is read through the verified handle, re-hashed against the signed targets; roles and expiry are what
the TUF client trusted. Unverified (``--unverified``, for an appliance whose metadata expired): the
members are read as the archive holds them, each with a bound, and the report says so on every page.
Either way every member is parsed into checked types: a malformed one is a one-line FormatError naming it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from packaging.utils import canonicalize_name

from chiron.archive.layout import METADATA_PREFIX, root_member_version
from chiron.archive.manifest import (
    LOCK,
    MANIFEST,
    MAX_LOCK,
    MAX_MANIFEST,
    LockSummary,
    Manifest,
    ManifestImage,
    parse_lock_summary,
    parse_manifest,
)
from chiron.archive.reader import ArchiveReader, sha256_range
from chiron.core.clock import iso, parse_iso
from chiron.core.text import plain
from chiron.engines.report.model import Appliance, Environment, FileRow, PackageRow, Role, Verification
from chiron.engines.verify import VerifiedAppliance, VerifyReport, verified
from chiron.errors import ArtifactError, FormatError, VerificationError
from chiron.sources import sbom as _sbom
from chiron.sources import wheelmeta as _wheelmeta
from chiron.trust.client import METADATA_LIMITS

MAX_REQUIREMENTS = 16 << 20
MAX_SBOM = 256 << 20
MAX_WHEEL = 256 << 20  # past this a wheel's licence is not looked for (only without an SBOM)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Reading(Protocol):
    """Members of one appliance: signed (re-hashed as read) or as the archive holds them."""

    targets: dict[str, tuple[int, str]]  # member -> (length, sha256) as signed (or as the archive claims)

    def has(self, name: str) -> bool: ...

    def read(self, name: str, limit: int) -> bytes: ...


class VerifiedReading:
    def __init__(self, handle: VerifiedAppliance) -> None:
        self.handle = handle
        self.targets = {n: (t.length, t.sha256) for n, t in handle.targets.items()}

    def has(self, name: str) -> bool:
        return name in self.targets

    def read(self, name: str, limit: int) -> bytes:
        return self.handle.reader.read_checked(name, self.targets[name][1], limit)


class UnverifiedReading:
    def __init__(self, reader: ArchiveReader, targets: dict[str, tuple[int, str]]) -> None:
        self.reader = reader
        self.targets = targets

    def has(self, name: str) -> bool:
        return self.reader.has(name)

    def read(self, name: str, limit: int) -> bytes:
        return self.reader.read(name, limit)


@dataclass(frozen=True)
class Trust:
    """What verification established (or, unverified, what the archive claims) about its metadata."""

    verified: bool
    anchor: str
    root_fingerprint: str
    root: bytes | None  # the newest trusted root metadata: keys and thresholds of every role
    roles: dict[str, tuple[int, str]]  # role -> (version, expires) of its metadata
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, report: VerifyReport) -> Trust:
        """The trust a successful verification established."""
        roles = {r: (int(v["version"]), str(v["expires"])) for r, v in report.roles.items()}
        return cls(
            verified=True,
            anchor=report.trust_anchor,
            root_fingerprint=report.root_fingerprint,
            root=report.trusted.get("root.json"),
            roles=roles,
            notices=tuple(report.notices),
            warnings=tuple(report.warnings),
        )


@contextlib.contextmanager
def opened(
    path: Path,
    *,
    verify: bool = True,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    reference_time: datetime | None = None,
) -> Iterator[tuple[Reading, Trust, int, str]]:
    """The appliance at ``path``, open for reading: (reading, trust, size, whole-file sha256).

    Verified unless ``verify`` is False; a failed verification is a VerificationError listing why.
    """
    if verify:
        with verified(path, root_file=root_file, root_sha256=root_sha256, reference_time=reference_time) as report:
            handle = report.verified
            yield VerifiedReading(handle), Trust.of(report), report.size, sha256_range(handle.reader.fd, 0, report.size)
        return
    try:
        reader = ArchiveReader(path)
    except FormatError as exc:
        raise VerificationError([f"{path}: not a readable chiron appliance: {exc.message}"]) from None
    with reader:
        targets, trust = _claimed(reader)
        yield UnverifiedReading(reader, targets), trust, reader.size, sha256_range(reader.fd, 0, reader.size)


def _claimed(reader: ArchiveReader) -> tuple[dict[str, tuple[int, str]], Trust]:
    """Targets and roles as the archive's own metadata states them (nothing checked)."""
    import hashlib

    from tuf.api.metadata import Metadata

    names = sorted(
        (m.name for m in reader.layout.members if root_member_version(m.name) is not None),
        key=lambda n: root_member_version(n) or 0,
    )
    try:
        roots = [reader.read(n, METADATA_LIMITS["root"]) for n in names]
        roles: dict[str, tuple[int, str]] = {}
        targets: dict[str, tuple[int, str]] = {}
        if roots:
            root = Metadata.from_bytes(roots[-1]).signed
            roles["root"] = (root.version, iso(root.expires))
        for role in ("targets", "snapshot", "timestamp"):
            member = f"{METADATA_PREFIX}{role}.json"
            if reader.has(member):
                signed: Any = Metadata.from_bytes(reader.read(member, METADATA_LIMITS[role])).signed
                roles[role] = (signed.version, iso(signed.expires))
                if role == "targets":
                    targets = {n: (t.length, str(t.hashes.get("sha256", ""))) for n, t in signed.targets.items()}
    except Exception as exc:  # python-tuf raises many kinds for malformed metadata; FormatError for bounds
        raise VerificationError([f"cannot read the archive's metadata: {plain(str(exc))}"]) from None
    trust = Trust(
        verified=False,
        anchor="NOT verified: what the archive holds, not what was signed",
        root_fingerprint=hashlib.sha256(roots[0]).hexdigest() if roots else "",
        root=roots[-1] if roots else None,
        roles=roles,
    )
    return targets, trust


def appliance(reading: Reading, trust: Trust, *, file: str, size: int, sha256: str, as_of: datetime) -> Appliance:
    """What the report shows of one appliance (expiry measured from ``as_of``)."""
    try:
        manifest = parse_manifest(reading.read(MANIFEST, MAX_MANIFEST)) if reading.has(MANIFEST) else None
        lock = parse_lock_summary(reading.read(LOCK, MAX_LOCK)) if reading.has(LOCK) else None
        sbom_data = reading.read(_sbom.MEMBER, MAX_SBOM) if reading.has(_sbom.MEMBER) else None
        sbom = _sbom.summary(sbom_data) if sbom_data is not None else None
        licences = _sbom.licences(sbom_data) if sbom_data is not None else None
    except ValueError as exc:  # FormatError is one; the SBOM's own checks raise ValueError
        raise FormatError(str(exc)) from None
    if manifest is None:
        raise FormatError(f"member {MANIFEST}: the appliance has none")
    packages = _packages(reading, lock, licences)
    half_life = _half_life(trust, manifest)
    return Appliance(
        file=file,
        size=size,
        sha256=sha256,
        name=manifest.name,
        version=manifest.version,
        description=manifest.description,
        created=manifest.created,
        chiron_version=manifest.chiron_version,
        tool_format=manifest.tool_format,
        metadata_version=trust.roles["targets"][0] if "targets" in trust.roles else None,
        root_fingerprint=trust.root_fingerprint,
        verification=Verification(trust.verified, trust.anchor, trust.notices, trust.warnings),
        roles=_roles(trust, manifest, as_of, half_life),
        half_life_days=None if half_life is None else round(half_life.total_seconds() / 86400, 2),
        environments=_environments(reading, manifest, lock, packages),
        packages=tuple(sorted(packages.values(), key=lambda p: (p.name, p.version))),
        images=tuple(
            sorted(
                (ManifestImage(i.ref, i.digest, tuple(sorted(i.platforms)), i.size) for i in manifest.images),
                key=lambda i: i.ref,
            )
        ),
        images_shared_bytes=manifest.images_shared_bytes,
        targets=len(reading.targets),
        sbom=None if sbom is None else f"CycloneDX {sbom['spec_version']}, sha256 {sbom['sha256']}",
    )


def _packages(
    reading: Reading, lock: LockSummary | None, licences: dict[tuple[str, str], str] | None
) -> dict[str, PackageRow]:
    """Every locked package once, with all its files (what the appliance carries of it)."""
    out: dict[str, PackageRow] = {}
    for pkg in lock.packages if lock else ():
        files = tuple(
            FileRow(f.name, *reading.targets.get(f"wheels/{f.name}", (f.size, "")))
            for f in (*pkg.wheels, *([pkg.sdist] if pkg.sdist else []))
        )
        if licences is not None:
            licence = licences.get((pkg.name, pkg.version), "")
        else:  # an appliance built before chiron carried an SBOM: the first wheel's own metadata
            licence = _wheel_licence(reading, next((f.name for f in files if f.name.endswith(".whl")), None))
        out[pkg.name] = PackageRow(pkg.name, pkg.version, licence, files)
    return out


def _wheel_licence(reading: Reading, wheel: str | None) -> str:
    member = f"wheels/{wheel}"
    if wheel is None or not reading.has(member) or reading.targets.get(member, (MAX_WHEEL + 1, ""))[0] > MAX_WHEEL:
        return ""
    try:
        return _wheelmeta.licence(_wheelmeta.read_metadata(reading.read(member, MAX_WHEEL), wheel))
    except ArtifactError:
        return ""  # not a readable wheel: the report shows no licence rather than refusing the appliance


def _environments(
    reading: Reading, manifest: Manifest, lock: LockSummary | None, packages: dict[str, PackageRow]
) -> tuple[Environment, ...]:
    """Each environment with what an install into it takes: the file its requirements pin by hash."""
    by_sha = {
        sha: name.removeprefix("wheels/") for name, (_n, sha) in reading.targets.items() if name.startswith("wheels/")
    }
    envs = []
    for env in manifest.environments:
        member = f"lock/requirements-{env.name}.txt"
        rows: list[PackageRow] = []
        if reading.has(member):
            for name, version, sha in _pins(reading.read(member, MAX_REQUIREMENTS), member):
                pkg = packages.get(name) or packages.get(canonicalize_name(name))
                chosen = next((f for f in pkg.files if f.sha256 == sha), None) if pkg else None
                if chosen is None:
                    length = reading.targets.get(f"wheels/{by_sha.get(sha, '')}", (0, sha))[0]
                    chosen = FileRow(by_sha.get(sha, "(not in the appliance)"), length, sha)
                rows.append(PackageRow(name, version, pkg.licence if pkg else "", (chosen,)))
        elif lock is not None:  # no requirements file: the lock's pins, with every file of each package
            for pin in lock.environments.get(env.name, ()):
                name, _, version = pin.partition("==")
                pkg = packages.get(name)
                rows.append(PackageRow(name, version, pkg.licence if pkg else "", pkg.files if pkg else ()))
        envs.append(
            Environment(
                env.name,
                env.python_version,
                env.implementation,
                tuple(env.platforms),
                tuple(sorted(rows, key=lambda p: (p.name, p.version))),
            )
        )
    return tuple(envs)


def _pins(data: bytes, member: str) -> list[tuple[str, str, str]]:
    """(name, version, sha256) of each pin of a requirements file chiron wrote."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise FormatError(f"member {member}: not UTF-8") from None
    pins = []
    for n, line in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # name==version --hash=sha256:HEX; the name is taken as it is (the report shows it, escaped).
        pin, _, digest = " ".join(line.split()).rpartition(" --hash=sha256:")
        name, _, version = pin.rpartition("==")
        if not name or not version or not _SHA256.fullmatch(digest):
            raise FormatError(f"member {member}: line {n} is not 'name==version --hash=sha256:HEX': {plain(line[:80])}")
        pins.append((name, version, digest))
    return pins


def _half_life(trust: Trust, manifest: Manifest) -> timedelta | None:
    """Half the timestamp's validity (from the appliance's creation to the timestamp's expiry)."""
    if "timestamp" not in trust.roles or not manifest.created:
        return None
    try:
        lifetime = parse_iso(trust.roles["timestamp"][1]) - parse_iso(manifest.created)
    except ValueError:
        return None
    return lifetime / 2 if lifetime.total_seconds() > 0 else None


def _roles(trust: Trust, manifest: Manifest, as_of: datetime, half_life: timedelta | None) -> tuple[Role, ...]:
    """Each role of the newest trusted root: its keys and threshold, and how long its metadata is valid."""
    from tuf.api.metadata import Metadata, Root

    if trust.root is None:
        return ()
    try:
        root = Metadata[Root].from_bytes(trust.root).signed
    except Exception as exc:  # python-tuf raises many kinds for malformed metadata
        raise VerificationError([f"cannot read the root metadata: {plain(str(exc))}"]) from None
    out = []
    for name in sorted(root.roles, key=_role_order):
        r = root.roles[name]
        version, expires = trust.roles.get(name, (None, None))
        days, state = _left(expires, as_of, half_life)
        out.append(
            Role(
                role=name,
                version=version,
                expires=expires,
                threshold=r.threshold,
                keys=len(r.keyids),
                key_types=tuple(sorted({root.keys[k].keytype for k in r.keyids if k in root.keys})),
                signed_by=tuple(manifest.signers.get(name, ())),
                days_left=days,
                state=state,
            )
        )
    return tuple(out)


def _role_order(name: str) -> tuple[int, str]:
    order = ("root", "targets", "snapshot", "timestamp")
    return (order.index(name) if name in order else len(order), name)


def _left(expires: str | None, as_of: datetime, half_life: timedelta | None) -> tuple[int | None, str]:
    if expires is None:
        return None, "unknown"
    try:
        left = parse_iso(expires) - as_of
    except ValueError:
        return None, "unknown"
    days = int(left.total_seconds() // 86400)
    if left.total_seconds() <= 0:
        return days, "expired"
    if half_life is not None and left < half_life:
        return days, "short"
    return days, "ok"
