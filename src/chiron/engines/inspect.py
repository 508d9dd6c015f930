"""Describe an appliance from its index and metadata (no verification: run ``verify`` for that)."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from chiron.archive.layout import METADATA_PREFIX
from chiron.archive.reader import read_layout
from chiron.errors import FormatError, UsageError, VerificationError
from chiron.sources import sbom as _sbom


def inspect_archive(path: Path) -> dict[str, Any]:
    """A JSON-able description: appliance, targets by kind, packages per environment, TUF roles."""
    from tuf.api.metadata import Metadata

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    from chiron.archive.delta import is_delta

    if is_delta(path):
        raise UsageError(
            f"{path} is a chiron delta, not a whole appliance",
            hint="inspect the full appliance it was made from, or the one a host rebuilds from it",
        )
    try:
        layout = read_layout(path)
    except FormatError as exc:
        raise VerificationError([f"layout: {exc}"]) from None
    regions = layout.regions()
    with path.open("rb") as f:
        fd = f.fileno()

        def read(name: str) -> bytes:
            offset, length = regions[name]
            return os.pread(fd, length, offset)

        try:
            manifest = json.loads(read("appliance.json")) if "appliance.json" in regions else {}
            md: dict[str, Metadata[Any]] = {
                n.removeprefix(METADATA_PREFIX): Metadata.from_bytes(read(n))
                for n in regions
                if n.startswith(METADATA_PREFIX)
            }
            lock = tomllib.loads(read("lock/pylock.toml").decode()) if "lock/pylock.toml" in regions else {}
            # Archives built before chiron carried an SBOM have none: null, not an error.
            sbom = _sbom.summary(read(_sbom.MEMBER)) if _sbom.MEMBER in regions else None
        except Exception as exc:
            raise VerificationError([f"cannot read the archive's metadata: {exc}"]) from None
    targets = md["targets.json"].signed.targets if "targets.json" in md else {}
    kinds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for tf in targets.values():
        kind = (tf.custom or {}).get("kind", "other")
        kinds[kind] += 1
        sizes[kind] += tf.length
    roots = sorted((k for k in md if k.split(".")[0].isdigit()), key=lambda k: int(k.split(".")[0]))
    roles: dict[str, Any] = {}
    if roots:
        root = md[roots[-1]].signed
        for role, r in root.roles.items():
            roles[role] = {
                "keyids": list(r.keyids),
                "key_types": sorted({root.keys[k].keytype for k in r.keyids if k in root.keys}),
                "threshold": r.threshold,
            }
        roles["root"].update(version=root.version, expires=_ts(root.expires))
    for role, schemes in manifest.get("signers", {}).items():
        if role in roles:
            roles[role]["signed_by"] = schemes
    for name in ("targets", "snapshot", "timestamp"):
        if f"{name}.json" in md and name in roles:
            signed = md[f"{name}.json"].signed
            roles[name].update(version=signed.version, expires=_ts(signed.expires))
    envs = lock.get("tool", {}).get("chiron", {}).get("environments", {})
    platforms = {e["name"]: e for e in manifest.get("environments", [])}
    packages = []
    for pkg in lock.get("packages", []):
        name, version = pkg["name"], pkg["version"]
        in_envs = sorted(e for e, pins in envs.items() if f"{name}=={version}" in pins)
        wheels = pkg.get("wheels", [])
        packages.append(
            {
                "name": name,
                "version": version,
                "environments": in_envs,
                "wheels": [w["name"] for w in wheels],
                "size": sum(int(w.get("size") or 0) for w in wheels),
            }
        )
    return {
        "schema": "chiron.inspect/1",
        "verified": False,
        "path": str(path),
        "size": layout.size,
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "description": manifest.get("description"),
        "created": manifest.get("created"),
        "tool_format": layout.tool_format,
        "chiron_version": manifest.get("chiron_version"),
        "environments": list(platforms.values()),
        "targets": {
            "count": len(targets),
            "bytes": sum(sizes.values()),
            "by_kind": {k: {"count": kinds[k], "bytes": sizes[k]} for k in sorted(kinds)},
        },
        "packages": packages,
        "images": manifest.get("images", []),
        "images_shared_bytes": manifest.get("images_shared_bytes", 0),
        "sbom": sbom,
        "roles": roles,
        "root_chain": [{"file": k, "sha256": hashlib.sha256(_bytes(path, regions, k)).hexdigest()} for k in roots],
        "root_fingerprint": hashlib.sha256(_bytes(path, regions, roots[0])).hexdigest() if roots else None,
    }


def _bytes(path: Path, regions: dict[str, tuple[int, int]], name: str) -> bytes:
    offset, length = regions[METADATA_PREFIX + name]
    with path.open("rb") as f:
        return os.pread(f.fileno(), length, offset)


def _ts(dt: Any) -> str:
    return str(dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


def render(info: dict[str, Any]) -> str:
    """The human-readable form of ``inspect_archive``'s result."""
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
        out.append(f"  {e['name']}: Python {e['python_version']} ({e['implementation']}), {', '.join(e['platforms'])}")
    if info["images"]:
        out += [
            "",
            f"images: {len(info['images'])} ({_size(info['images_shared_bytes'])} of layers shared, stored once)",
        ]
        for i in info["images"]:
            out.append(f"  {i['ref']}  {i['digest'][:19]}  {', '.join(i['platforms'])}  {_size(i['size'])}")
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
