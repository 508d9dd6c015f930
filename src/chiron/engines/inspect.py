"""Describe an appliance from its index and metadata (no verification: run ``verify`` for that).

Everything here comes from an archive nobody has verified yet: each member is read with a bound,
parsed into checked types (a malformed one is a one-line VerificationError naming it), and every
string is escaped before ``render`` prints it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from chiron.archive.layout import METADATA_PREFIX, is_metadata_file, root_member_version
from chiron.archive.manifest import (
    LOCK,
    MANIFEST,
    MAX_LOCK,
    MAX_MANIFEST,
    LockSummary,
    Manifest,
    parse_lock_summary,
    parse_manifest,
)
from chiron.archive.reader import ArchiveReader
from chiron.core.clock import iso
from chiron.core.text import plain
from chiron.errors import FormatError, UsageError, VerificationError
from chiron.sources import sbom as _sbom
from chiron.trust.client import METADATA_LIMITS

MAX_SBOM = 256 << 20


def inspect_archive(path: Path) -> dict[str, Any]:
    """A JSON-able description: appliance, targets by kind, packages per environment, TUF roles."""
    from chiron.archive.delta import is_delta

    if is_delta(path):  # also refuses a missing file, a FIFO or a device, before anything blocks
        raise UsageError(
            f"{path} is a chiron delta, not a whole appliance",
            hint="inspect the full appliance it was made from, or the one a host rebuilds from it",
        )
    try:
        reader = ArchiveReader(path)
    except FormatError as exc:
        raise VerificationError([f"layout: {exc.message}"]) from None
    with reader:
        manifest, md, lock, sbom, roots = _read_members(reader)
        size, tool_format = reader.size, reader.layout.tool_format
    targets = md["targets.json"].signed.targets if "targets.json" in md else {}
    kinds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for tf in targets.values():
        kind = str((tf.custom or {}).get("kind", "other"))
        kinds[kind] += 1
        sizes[kind] += tf.length
    return {
        "schema": "chiron.inspect/1",
        "verified": False,
        "path": str(path),
        "size": size,
        "name": manifest.name if manifest else None,
        "version": manifest.version if manifest else None,
        "description": manifest.description if manifest else None,
        "created": manifest.created if manifest else None,
        "tool_format": tool_format,
        "chiron_version": manifest.chiron_version if manifest else None,
        "environments": list(manifest.raw.get("environments", [])) if manifest else [],
        "targets": {
            "count": len(targets),
            "bytes": sum(sizes.values()),
            "by_kind": {k: {"count": kinds[k], "bytes": sizes[k]} for k in sorted(kinds)},
        },
        "packages": _packages(lock),
        "images": list(manifest.raw.get("images", [])) if manifest else [],
        "images_shared_bytes": manifest.images_shared_bytes if manifest else 0,
        "sbom": sbom,
        "roles": _roles(md, roots, manifest),
        "root_chain": [{"file": k, "sha256": digest} for k, digest in roots.items()],
        "root_fingerprint": next(iter(roots.values()), None),
    }


def _read_members(
    reader: ArchiveReader,
) -> tuple[Manifest | None, dict[str, Any], LockSummary | None, dict[str, Any] | None, dict[str, str]]:
    """The manifest, the TUF metadata by file name, the lock, the SBOM summary and the root chain
    (file name -> sha256, by version), each read with its bound."""
    from tuf.api.metadata import Metadata

    names = [m.name for m in reader.layout.members]
    try:
        manifest = parse_manifest(reader.read(MANIFEST, MAX_MANIFEST)) if reader.has(MANIFEST) else None
        lock = parse_lock_summary(reader.read(LOCK, MAX_LOCK)) if reader.has(LOCK) else None
        # Archives built before chiron carried an SBOM have none: null, not an error.
        sbom = _sbom.summary(reader.read(_sbom.MEMBER, MAX_SBOM)) if reader.has(_sbom.MEMBER) else None
        md: dict[str, Any] = {}
        roots: dict[str, str] = {}
        for name in sorted((n for n in names if is_metadata_file(n)), key=lambda n: root_member_version(n) or 0):
            version = root_member_version(name)
            data = reader.read(name, METADATA_LIMITS["root" if version else name[len(METADATA_PREFIX) : -5]])
            md[name.removeprefix(METADATA_PREFIX)] = Metadata.from_bytes(data)
            if version is not None:
                roots[name.removeprefix(METADATA_PREFIX)] = hashlib.sha256(data).hexdigest()
    except Exception as exc:  # python-tuf raises many kinds for malformed metadata; FormatError; sbom: ValueError
        raise VerificationError([f"cannot read the archive's metadata: {plain(str(exc))}"]) from None
    return manifest, md, lock, sbom, roots


def _packages(lock: LockSummary | None) -> list[dict[str, Any]]:
    if lock is None:
        return []
    return [
        {
            "name": pkg.name,
            "version": pkg.version,
            "environments": sorted(e for e, pins in lock.environments.items() if f"{pkg.name}=={pkg.version}" in pins),
            "wheels": [w.name for w in pkg.wheels],
            "size": sum(w.size for w in pkg.wheels),
        }
        for pkg in lock.packages
    ]


def _roles(md: dict[str, Any], roots: dict[str, str], manifest: Manifest | None) -> dict[str, Any]:
    """Each role of the newest root: keys, threshold, and version and expiry of its metadata."""
    roles: dict[str, Any] = {}
    if not roots:
        return roles
    root = md[list(roots)[-1]].signed
    for role, r in root.roles.items():
        roles[role] = {
            "keyids": list(r.keyids),
            "key_types": sorted({root.keys[k].keytype for k in r.keyids if k in root.keys}),
            "threshold": r.threshold,
        }
    if "root" in roles:
        roles["root"].update(version=root.version, expires=iso(root.expires))
    for role, schemes in (manifest.signers if manifest else {}).items():
        if role in roles:
            roles[role]["signed_by"] = list(schemes)
    for name in ("targets", "snapshot", "timestamp"):
        if f"{name}.json" in md and name in roles:
            signed = md[f"{name}.json"].signed
            roles[name].update(version=signed.version, expires=iso(signed.expires))
    return roles


def _escaped(value: Any) -> Any:
    """``value`` with every string in it made safe to print (they come from an unverified archive)."""
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def render(info: dict[str, Any]) -> str:
    """The human-readable form of ``inspect_archive``'s result, every string escaped."""
    info = _escaped(info)
    out = [
        f"{info['name']} {info['version']}  ({info['tool_format']}, {_size(info['size'])}, created {info['created']})",
        "  (inspect reads the archive without verifying it; run 'verify' before trusting it)",
        f"root fingerprint (sha256 of 1.root.json): {info['root_fingerprint']}",
        "",
        "TUF roles:",
    ]
    for role, r in info["roles"].items():
        ids = ", ".join(k[:12] for k in r["keyids"])
        out.append(
            f"  {role:<10} v{r.get('version', '?'):<4} threshold {r['threshold']} of {len(r['keyids'])} "
            f"[{ids}] ({'/'.join(r['key_types'])}{', via ' + '/'.join(r['signed_by']) if r.get('signed_by') else ''}) "
            f"expires {r.get('expires', '?')}"
        )
    t = info["targets"]
    out += ["", f"targets: {t['count']} signed, {_size(t['bytes'])}"]
    out += [f"  {k:<13} {v['count']:>5}  {_size(v['bytes'])}" for k, v in t["by_kind"].items()]
    out += ["", "environments:"]
    for e in info["environments"]:
        platforms = ", ".join(e.get("platforms", []))
        out.append(f"  {e['name']}: Python {e['python_version']} ({e.get('implementation', 'cp')}), {platforms}")
    if info["images"]:
        out += [
            "",
            f"images: {len(info['images'])} ({_size(info['images_shared_bytes'])} of layers shared, stored once)",
        ]
        for i in info["images"]:
            platforms = ", ".join(i.get("platforms", []))
            out.append(f"  {i['ref']}  {i['digest'][:19]}  {platforms}  {_size(i.get('size', 0))}")
    out += ["", f"python packages: {len(info['packages'])}"]
    for p in info["packages"]:
        out.append(f"  {p['name']:<28} {p['version']:<12} {_size(p['size']):>10}  {', '.join(p['environments'])}")
    sbom = info.get("sbom")
    if sbom:
        kinds = ", ".join(f"{n} {t}" for t, n in sbom["components"].items()) or "no components"
        licences = ", ".join(f"{name} ({n})" for name, n in sbom["licences"].items()) or "none"
        out += [
            "",
            f"SBOM: {_sbom.MEMBER} (CycloneDX {sbom['spec_version']}), components: {kinds}",
            f"  sha256 {sbom['sha256']}",
            f"  package licences: {licences}",
        ]
    return "\n".join(out)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
