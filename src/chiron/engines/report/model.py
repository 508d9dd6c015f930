"""What a report shows, as typed values: one appliance (summary, roles, environments with their
packages, images), the changes against another, the store's history of versions and the policy verdict
it recorded. Every string in here came from an appliance or a store: the templates escape all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from chiron.archive.manifest import ManifestImage


@dataclass(frozen=True)
class FileRow:
    """One file of a package (a wheel or an sdist) as the appliance signs it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackageRow:
    name: str
    version: str
    licence: str
    files: tuple[FileRow, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Environment:
    name: str
    python_version: str
    implementation: str
    platforms: tuple[str, ...]
    packages: tuple[PackageRow, ...]  # what an install into this environment takes: one file per package

    @property
    def size(self) -> int:
        return sum(p.size for p in self.packages)


@dataclass(frozen=True)
class Role:
    """A TUF role: who signs it (keys, threshold) and until when its metadata is valid."""

    role: str
    version: int | None
    expires: str | None
    threshold: int
    keys: int
    key_types: tuple[str, ...]
    signed_by: tuple[str, ...]
    days_left: int | None  # whole days from the report's "as of" date; None when the expiry is unknown
    state: str  # ok | short (less than the timestamp's half-life left) | expired | unknown


@dataclass(frozen=True)
class Verification:
    verified: bool
    anchor: str  # what the appliance was verified against, or why it was not
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Appliance:
    """One appliance as the report shows it (``packages``: every locked package once, all its files)."""

    file: str  # the file name, not the path: a report must not depend on where it was made
    size: int
    sha256: str
    name: str
    version: str
    description: str
    created: str
    chiron_version: str
    tool_format: str
    metadata_version: int | None
    root_fingerprint: str
    verification: Verification
    roles: tuple[Role, ...]
    half_life_days: float | None  # half the timestamp's validity: less left than this is a warning
    environments: tuple[Environment, ...]
    packages: tuple[PackageRow, ...]
    images: tuple[ManifestImage, ...]  # platforms sorted
    images_shared_bytes: int
    targets: int
    sbom: str | None  # "CycloneDX 1.6, sha256 ..." or None for an appliance without one

    @property
    def warnings(self) -> list[str]:
        return [r.role for r in self.roles if r.state in ("short", "expired")]


@dataclass(frozen=True)
class PackageChange:
    name: str
    kind: str  # added | removed | upgraded | downgraded | changed (same version, other files) | licence
    old_version: str | None
    new_version: str | None
    old_licence: str | None
    new_licence: str | None
    size_change: int


@dataclass(frozen=True)
class ImageChange:
    ref: str
    kind: str  # added | removed | changed
    old_digest: str | None
    new_digest: str | None


@dataclass(frozen=True)
class Changes:
    """What changed from ``old`` (``--against``) to the appliance the report is about."""

    old: Appliance
    packages: tuple[PackageChange, ...]
    images: tuple[ImageChange, ...]

    def of(self, kind: str) -> list[PackageChange]:
        return [c for c in self.packages if c.kind == kind]

    @property
    def licence_changes(self) -> list[PackageChange]:
        return [
            c
            for c in self.packages
            if c.old_version is not None and c.new_version is not None and c.old_licence != c.new_licence
        ]


@dataclass(frozen=True)
class Version:
    """One version a mirror store recorded."""

    metadata_version: int
    version: str
    created: str
    size: int
    file: str
    pruned: bool
    this: bool  # the appliance the report is about


@dataclass(frozen=True)
class Advisory:
    """A known vulnerability the policy let through (its id, or an alias of it, is in ``ignore``)."""

    id: str
    aliases: tuple[str, ...]
    package: str
    version: str
    summary: str


@dataclass(frozen=True)
class PolicyVerdict:
    """What the store recorded when it signed this version: the policy passed, and what it accepted."""

    verdict: str
    policy: str
    policy_sha256: str
    rules: tuple[tuple[str, str], ...]  # (rule, setting) as the policy had them
    advisories: tuple[Advisory, ...]
    osv_records: int


@dataclass(frozen=True)
class StoreView:
    """What the mirror store says about the appliance: its versions and the policy verdict."""

    name: str
    versions: tuple[Version, ...]
    verdict: PolicyVerdict | None
    note: str  # why there is no verdict, or ""


@dataclass(frozen=True)
class Report:
    appliance: Appliance
    as_of: str  # the date expiry is measured from (YYYY-MM-DD)
    changes: Changes | None = None
    store: StoreView | None = None
    notes: tuple[str, ...] = field(default=())
