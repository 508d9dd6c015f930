"""The refresh's options and result, and what one run knows as it goes (``Run``): shared by the
refresh steps and the commit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.spec import LoadedSpec, load_spec
from chiron.core.storestate import StoreState, VersionRecord
from chiron.core.text import canonical_json
from chiron.engines import policy
from chiron.sources.cache import Fetched, FetchStats
from chiron.sources.tool import ToolFormat

from .store import Store


@dataclass(frozen=True)
class RefreshOptions:
    store: Path
    tool_wheels: Path | None = None  # default: the tool of the store's newest appliance, signed again
    spec: Path | None = None  # default: the spec the store was last refreshed from
    base_dir: Path | None = None  # where the spec's relative paths resolve (default: its folder)
    tool_format: ToolFormat = "pex"
    policy: Path | None = None  # default: policy.toml beside the spec, if there is one
    delta_from: Path | None = None  # an older appliance or a host inventory (chiron inventory)
    force: bool = False
    source_date_epoch: int | None = None
    show_progress: bool = True


@dataclass
class RefreshResult:
    store: Path
    changed: bool
    name: str
    version: str
    metadata_version: int
    appliance: Path | None
    downloaded: int
    bytes_downloaded: int
    reused: int
    seconds: float
    image_blobs_fetched: int = 0  # blobs new in the store's OCI layout (what skopeo fetched)
    image_bytes_fetched: int = 0
    delta: Path | None = None
    delta_size: int | None = None
    size: int | None = None
    changelog: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    root: dict[str, Any] = field(default_factory=dict)  # root_fingerprint, newest_root

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.mirror-refresh/1",
            "store": str(self.store),
            "changed": self.changed,
            "name": self.name,
            "version": self.version,
            "metadata_version": self.metadata_version,
            "appliance": str(self.appliance) if self.appliance else None,
            "size": self.size,
            "delta": str(self.delta) if self.delta else None,
            "delta_size": self.delta_size,
            "downloaded": self.downloaded,
            "bytes_downloaded": self.bytes_downloaded,
            "reused": self.reused,
            "image_blobs_fetched": self.image_blobs_fetched,
            "image_bytes_fetched": self.image_bytes_fetched,
            "seconds": round(self.seconds, 3),
            "changelog": self.changelog,
            "notes": self.notes,
            "warnings": self.warnings,
            **self.root,
        }


def release_version(spec_version: str, number: int) -> str:
    """The appliance version of metadata version ``number``: ``SPEC+N`` (PEP 440 local segment), or
    ``SPEC.N`` when the spec's version already has one. It increases with N, so upgrade's "older
    version" check holds between releases of the same spec version."""
    return f"{spec_version}.{number}" if "+" in spec_version else f"{spec_version}+{number}"


def content_key(
    *, spec: bytes, pylock: bytes, images: list[dict[str, Any]], files: dict[str, str], root: bytes, tool_sha256: str
) -> str:
    """What an appliance is made of; equal keys mean a new build would only re-sign the same content."""
    return hashlib.sha256(
        canonical_json(
            {
                "spec": hashlib.sha256(spec).hexdigest(),
                "lock": hashlib.sha256(pylock).hexdigest(),
                "images": images,
                "files": files,
                "root": hashlib.sha256(root).hexdigest(),
                "tool": tool_sha256,
            }
        )
    ).hexdigest()


@dataclass
class Run:
    """What one refresh knows, gathered step by step."""

    store: Store
    opts: RefreshOptions
    state: StoreState | None
    loaded: LoadedSpec
    spec_path: Path
    base: Path | None
    files_dir: Path | None
    root_path: Path
    rules: policy.LoadedPolicy
    policy_path: Path | None
    built_at: int  # the build time in seconds (SOURCE_DATE_EPOCH, else now)
    started: float
    chain: list[bytes] = field(default_factory=list)  # the root chain to sign with
    signed_with: int = 0  # how many root versions the store signed with before this run
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)  # advisories the policy let through

    @property
    def latest(self) -> VersionRecord | None:
        return self.state.latest if self.state else None


def load(spec_path: Path, base: Path | None) -> LoadedSpec:
    loaded = load_spec(spec_path)
    if base is not None:
        loaded = LoadedSpec(spec=loaded.spec, path=(base / spec_path.name).absolute(), raw=loaded.raw)
    return loaded


@dataclass(frozen=True)
class FetchedRun:
    got: Fetched
    stats: FetchStats
