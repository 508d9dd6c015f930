"""``chiron diff OLD NEW``: what changed between two appliances: Python packages added, removed and
upgraded (versions, sizes, licences from each wheel's own metadata) and container images.

Neither appliance is verified here: each is opened through the strict reader (regions must tile the
file), every member read with a bound and parsed into checked types, and every string escaped before
``render`` prints it. A malformed appliance is a one-line VerificationError naming it (exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chiron.archive.manifest import LOCK, MANIFEST, MAX_LOCK, MAX_MANIFEST, parse_lock_summary, parse_manifest
from chiron.archive.reader import ArchiveReader
from chiron.core.text import plain
from chiron.errors import ArtifactError, FormatError, VerificationError
from chiron.sources import wheelmeta as _wheelmeta

# A wheel is read whole to find its licence; past this size diff reports no licence rather than
# holding a huge (and unverified) member in memory.
MAX_WHEEL = 256 << 20


def _licence(reader: ArchiveReader, member: str, where: str) -> str:
    """The licence a wheel declares, or "" when it cannot be read (diff reports, it does not judge)."""
    if reader.region(member)[1] > MAX_WHEEL:
        return ""
    try:
        return _wheelmeta.licence(_wheelmeta.read_metadata(reader.read(member, MAX_WHEEL), where))
    except (ArtifactError, Exception):
        return ""


def _packages(reader: ArchiveReader) -> dict[str, dict[str, Any]]:
    if not reader.has(LOCK):
        return {}
    lock = parse_lock_summary(reader.read(LOCK, MAX_LOCK), f"{reader.path}: {LOCK}")
    out: dict[str, dict[str, Any]] = {}
    for pkg in lock.packages:
        files = [*pkg.wheels, *([pkg.sdist] if pkg.sdist else [])]
        first = next((w.name for w in files if reader.has(f"wheels/{w.name}")), None)
        out[pkg.name] = {
            "version": pkg.version,
            "size": sum(w.size for w in files),
            "licence": _licence(reader, f"wheels/{first}", first) if first and first.endswith(".whl") else "",
        }
    return out


def _images(reader: ArchiveReader) -> dict[str, dict[str, Any]]:
    if not reader.has(MANIFEST):
        return {}
    manifest = parse_manifest(reader.read(MANIFEST, MAX_MANIFEST), f"{reader.path}: {MANIFEST}")
    return {i.ref: {"ref": i.ref, "digest": i.digest} for i in manifest.images}


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(packages, images) of one appliance; VerificationError naming it when it is malformed."""
    try:
        with ArchiveReader(path) as reader:
            return _packages(reader), _images(reader)
    except FormatError as exc:
        raise VerificationError([f"{path}: not a readable chiron appliance: {exc.message}"]) from None


def diff(old: Path, new: Path) -> dict[str, Any]:
    """A JSON-able changelog from ``old`` to ``new`` (neither is verified here: verify them first)."""
    (a, ia), (b, ib) = _read(old), _read(new)
    added = [{"name": n, **b[n]} for n in sorted(set(b) - set(a))]
    removed = [{"name": n, **a[n]} for n in sorted(set(a) - set(b))]
    changed = []
    for n in sorted(set(a) & set(b)):
        if a[n]["version"] != b[n]["version"] or a[n]["licence"] != b[n]["licence"]:
            changed.append(
                {
                    "name": n,
                    "from_version": a[n]["version"],
                    "to_version": b[n]["version"],
                    "size_change": b[n]["size"] - a[n]["size"],
                    "from_licence": a[n]["licence"],
                    "to_licence": b[n]["licence"],
                }
            )
    images = {
        "added": [{"ref": r, "digest": ib[r]["digest"]} for r in sorted(set(ib) - set(ia))],
        "removed": [{"ref": r, "digest": ia[r]["digest"]} for r in sorted(set(ia) - set(ib))],
        "changed": [
            {"ref": r, "from_digest": ia[r]["digest"], "to_digest": ib[r]["digest"]}
            for r in sorted(set(ia) & set(ib))
            if ia[r]["digest"] != ib[r]["digest"]
        ],
    }
    return {
        "schema": "chiron.diff/1",
        "old": str(old),
        "new": str(new),
        "packages": {"added": added, "removed": removed, "changed": changed},
        "images": images,
    }


def _escaped(value: Any) -> Any:
    """``value`` with every string in it made safe to print (they come from unverified archives)."""
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def render(d: dict[str, Any]) -> str:
    """The changelog as text, every string escaped."""
    d = _escaped(d)
    lines = [f"changes from {d['old']} to {d['new']}:"]
    p = d["packages"]
    for x in p["added"]:
        lines.append(f"  + {x['name']} {x['version']} ({x['size']} bytes{', ' + x['licence'] if x['licence'] else ''})")
    for x in p["removed"]:
        lines.append(f"  - {x['name']} {x['version']}")
    for x in p["changed"]:
        lic = (
            f"; licence {x['from_licence'] or '?'} -> {x['to_licence'] or '?'}"
            if x["from_licence"] != x["to_licence"]
            else ""
        )
        lines.append(f"  ~ {x['name']} {x['from_version']} -> {x['to_version']} ({x['size_change']:+d} bytes{lic})")
    i = d["images"]
    lines += [f"  + image {x['ref']} {x['digest'][:19]}" for x in i["added"]]
    lines += [f"  - image {x['ref']}" for x in i["removed"]]
    lines += [f"  ~ image {x['ref']} {x['from_digest'][:19]} -> {x['to_digest'][:19]}" for x in i["changed"]]
    if len(lines) == 1:
        lines.append("  (no package or image changes)")
    return "\n".join(lines)
