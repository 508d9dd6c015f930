"""The images seam: the appliance's container images loaded into the Docker Engine or pushed into an
enclave registry, at install/upgrade time or later from the kept appliance of the installed release
(``chiron images load|push``). Every blob is re-hashed against the signed targets as it is read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chiron.archive.layout import METADATA_PREFIX
from chiron.archive.reader import ArchiveReader
from chiron.core.hoststate import ReleaseRecord
from chiron.engines.host.auditlog import audit
from chiron.engines.host.paths import KEPT_APPLIANCE, Paths
from chiron.engines.host.state import load_state, locked
from chiron.engines.verify import VerifiedAppliance
from chiron.errors import ChironError, EnvironmentProblem, HostStateError, UsageError, VerificationError
from chiron.trust.client import TrustedTarget

MAX_TARGETS = 64 << 20  # the bound verify gives python-tuf for targets metadata


def host_platform() -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return f"linux/{arch}"


def move_images(mode: str, registry: str | None, appliance: VerifiedAppliance) -> tuple[str, list[str]]:
    """Load (``mode`` "load") or push (``mode`` "push") the appliance's images; the notice and refs."""
    from chiron.sources import images as _images

    images = appliance.manifest.get("images") or []
    if mode == "push":
        if not registry:
            raise UsageError("--images push needs --registry HOST[:PORT]")
        pushed = _images.push_to_registry(appliance.read, images, host_platform(), registry)
        return f"pushed {len(pushed)} image(s) to {registry}: {', '.join(pushed)}", pushed
    loaded = _images.load_into_engine(appliance.read, images, host_platform())
    return f"loaded {len(loaded)} image(s) into the Docker Engine: {', '.join(loaded)}", loaded


def load_images(
    mode: str, registry: str | None, appliance: VerifiedAppliance, required: bool, notices: list[str]
) -> None:
    """The install/upgrade step: load or push the images, or leave them.

    Loading is idempotent (by digest), so it happens before the switch; a host without an engine
    still gets its Python release unless the spec says images are required.
    """
    images = appliance.manifest.get("images") or []
    if not images or mode == "skip":
        if images:
            notices.append(f"{len(images)} image(s) left in the appliance (--images skip)")
        return
    try:
        notice, _refs = move_images(mode, registry, appliance)
    except EnvironmentProblem as exc:
        if required:
            raise
        verb = "pushed" if mode == "push" else "loaded"
        notices.append(f"images not {verb}: {exc.diagnostics()}; the Python release is installed anyway")
        return
    notices.append(notice)


@contextlib.contextmanager
def kept_appliance(paths: Paths, rid: str, rec: ReleaseRecord) -> Iterator[VerifiedAppliance]:
    """The appliance kept with release ``rid``, read through checked reads: its targets metadata must
    be the one recorded when the release was verified and installed, and every member read is
    re-hashed against it."""
    from tuf.api.metadata import Metadata, Targets

    kept = paths.release(rid) / KEPT_APPLIANCE
    if not kept.is_file():
        raise HostStateError(
            f"{kept}: missing, so the images of release {rid} cannot be read",
            hint="upgrade to the appliance again (a release installed by an older chiron kept no copy)",
        )
    reader = ArchiveReader(kept)
    try:
        raw = reader.read(f"{METADATA_PREFIX}targets.json", limit=MAX_TARGETS)
        if hashlib.sha256(raw).hexdigest() != rec.targets_sha256:
            raise VerificationError(
                [f"{kept}: its targets metadata is not the one verified when release {rid} was installed (modified?)"]
            )
        signed = Metadata[Targets].from_bytes(raw).signed
        targets = {
            name: TrustedTarget(name, t.length, t.hashes.get("sha256", ""), dict(t.custom or {}))
            for name, t in signed.targets.items()
        }
        appliance = VerifiedAppliance(reader, targets, {})
        appliance.manifest = json.loads(appliance.read("appliance.json"))
        yield appliance
    finally:
        reader.close()


def installed_images(
    prefix: Path, state_dir: Path | None, mode: str, registry: str | None, wait: float = 0.0
) -> dict[str, Any]:
    """``chiron images load|push``: the images of the INSTALLED (current) release, from its kept
    appliance, into the Docker Engine or an enclave registry; audited."""
    if mode not in ("load", "push"):
        raise UsageError(f"images: '{mode}' is not load or push")
    if (mode == "push") != bool(registry):
        raise UsageError("images push needs --registry HOST[:PORT][/PREFIX] (and images load takes none)")
    paths = Paths.make(prefix, state_dir)
    with locked(paths, f"images {mode}", wait, create=False):
        state = load_state(paths)
        if state is None or state.current is None:
            raise UsageError(f"{paths.prefix}: nothing is installed here")
        rid = state.current
        with kept_appliance(paths, rid, state.releases[rid]) as appliance:
            count = len(appliance.manifest.get("images") or [])
            try:
                notice, refs = move_images(mode, registry, appliance) if count else ("no images", [])
            except ChironError as exc:
                audit(paths, f"images-{mode}", "failed", release=rid, reason=exc.diagnostics())
                raise
        audit(paths, f"images-{mode}", "ok", release=rid, images=refs, **({"registry": registry} if registry else {}))
    return {
        "schema": "chiron.images/1",
        "op": mode,
        "release": rid,
        "registry": registry,
        "images": refs,
        "message": notice if count else f"release {rid} carries no container images",
    }
