"""What a host holds, read-only: ``status`` (releases, installed packages, trusted metadata and its
expiry, the root fingerprint, the last operations) and ``inventory`` (for a delta made to fit it)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from chiron import __version__
from chiron.archive import delta
from chiron.core.hoststate import HostState, format_time, parse_time
from chiron.engines.host.paths import KEPT_APPLIANCE, Paths, now
from chiron.engines.host.recovery import unknown_releases
from chiron.engines.host.state import load_state, read_floor, read_txn
from chiron.engines.host.trial import read_trial
from chiron.engines.verify import TRUSTED_FILES
from chiron.errors import UsageError

WARN_FRACTION = 4  # warn when less than 1/4 of a role's validity period is left
FALLBACK_WARNING = timedelta(days=7)  # when the period is unknown (no release records its issue time)


def _issued(state: HostState, role: str, version: int) -> datetime | None:
    """When the trusted version of ``role`` was signed: the build time of a release that carried it."""
    for rec in state.releases.values():
        if rec.metadata_versions.get(role) == version:  # type: ignore[call-overload]
            created = rec.created_time()
            if created is not None:
                return created
    return None


def expiry_warning(role: str, expires: datetime, issued: datetime | None, at: datetime) -> str | None:
    """A warning when ``role`` has expired, or less than a quarter of its validity period is left
    (a fixed window would always fire for a 1-day timestamp, and never in time for a 1-year root)."""
    if expires <= at:
        return f"trusted {role} metadata expired on {format_time(expires)}: the next upgrade must carry newer"
    period = expires - issued if issued is not None and expires > issued else None
    window = period / WARN_FRACTION if period is not None else FALLBACK_WARNING
    if expires - at >= window:
        return None
    left = expires - at
    of = f" of its {period} validity" if period is not None else ""
    return f"trusted {role} metadata expires on {format_time(expires)} ({left} left{of}): carry a newer appliance"


def packages(paths: Paths, rid: str) -> list[dict[str, str]]:
    """The distributions installed in a release's venv (read from their metadata; nothing is run)."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    sites = sorted((paths.release(rid) / "venv" / "lib").glob("python*/site-packages"))
    found = {}
    for dist in distributions(path=[str(s) for s in sites]):
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found[canonicalize_name(name)] = {"name": str(name), "version": str(dist.version)}
    return [found[k] for k in sorted(found)]


def _metadata(paths: Paths, state: HostState, at: datetime) -> tuple[dict[str, Any], list[str], str | None]:
    from tuf.api.metadata import Metadata

    metadata: dict[str, Any] = {}
    warnings: list[str] = []
    fingerprint = None
    for name in TRUSTED_FILES if state.metadata_digests else ():
        raw = (paths.metadata / name).read_bytes()
        md = Metadata.from_bytes(raw)
        role = name.removesuffix(".json")
        if role == "root":
            fingerprint = hashlib.sha256(raw).hexdigest()
        expires = md.signed.expires
        metadata[role] = {"version": md.signed.version, "expires": format_time(expires)}
        warning = expiry_warning(role, expires, _issued(state, role, md.signed.version), at)
        if warning:
            warnings.append(warning)
    return metadata, warnings, fingerprint


# One document assembled field by field (chiron.status/1), in the order of its schema.
def status(prefix: Path, state_dir: Path | None) -> dict[str, Any]:
    """Releases, the current one and its packages, trusted metadata versions and expiry, the root
    fingerprint, last operations."""
    paths = Paths.make(prefix, state_dir)
    state = load_state(paths)
    txn = read_txn(paths)
    if state is None and txn is None:
        raise UsageError(f"{paths.prefix}: nothing is installed here (no {paths.state_file})")
    state = state or HostState.empty()
    metadata, warnings, fingerprint = _metadata(paths, state, now())
    for rid in unknown_releases(paths, state):
        warnings.append(
            f"{paths.releases / rid}: a release state.json does not know (state restored from a backup?); "
            "remove it if it is not needed"
        )
    current = None
    installed: list[dict[str, str]] = []
    if state.current:
        rel = state.releases[state.current]
        current = {
            "release": state.current,
            "name": rel.name,
            "version": rel.version,
            "environment": rel.environment,
            "installed": rel.installed,
        }
        installed = packages(paths, state.current)
    ops: list[dict[str, Any]] = []
    if paths.audit.is_file():
        for line in paths.audit.read_text(errors="replace").splitlines()[-10:]:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                ops.append(entry)
            else:
                warnings.append("the audit log has a damaged line: run 'chiron audit verify'")
    floor = read_floor(paths)
    trial = read_trial(paths)
    if trial is not None and trial.phase == "on-trial" and parse_time(trial.deadline) <= now():
        warnings.append(
            f"release {trial.release} is still on trial past its deadline {trial.deadline}: "
            "the next chiron operation (chiron recover) reverts it"
        )
    return {
        "schema": "chiron.status/1",
        "prefix": str(paths.prefix),
        "state_dir": str(paths.state),
        "current": current,
        "previous": state.previous,
        "releases": {rid: rec.model_dump(mode="json") for rid, rec in state.releases.items()},
        "packages": installed,
        "metadata": metadata,
        "root_fingerprint": fingerprint,
        "time_floor": format_time(floor) if floor else None,
        "pending_transaction": txn.model_dump(mode="json") if txn else None,
        "trial": trial.model_dump(mode="json") if trial else None,
        "warnings": warnings,
        "last_operations": ops,
        "chiron_version": __version__,
    }


def inventory(prefix: Path, state_dir: Path | None) -> dict[str, Any]:
    """What this host holds, for a delta made to fit it (``chiron inventory``; carried to the mirror)."""
    paths = Paths.make(prefix, state_dir)
    state = load_state(paths)
    if state is None or state.current is None:
        raise UsageError(f"{paths.prefix}: nothing is installed here")
    kept = [rid for rid in sorted(state.releases) if (paths.release(rid) / KEPT_APPLIANCE).is_file()]
    releases = [
        {
            "release": rid,
            "version": state.releases[rid].version,
            "metadata_versions": {str(k): v for k, v in state.releases[rid].metadata_versions.items()},
        }
        for rid in kept
    ]
    name = state.releases[state.current].name
    return delta.inventory(name, releases, [paths.release(rid) / KEPT_APPLIANCE for rid in kept])
