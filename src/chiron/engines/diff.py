"""``chiron diff OLD NEW``: what changed between two appliances: Python packages added, removed and
upgraded (versions, sizes, licences from each wheel's own metadata) and container images."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from chiron.archive.layout import Layout
from chiron.archive.reader import read_layout
from chiron.errors import ArtifactError, FormatError, UsageError
from chiron.sources import wheelmeta as _wheelmeta


def _member(path: Path, layout: Layout, name: str) -> bytes:
    offset, length = layout.regions()[name]
    with path.open("rb") as f:
        return os.pread(f.fileno(), length, offset)


def _licence(wheel: bytes, where: str) -> str:
    """The licence a wheel declares, or "" when it cannot be read (diff reports, it does not judge)."""
    try:
        return _wheelmeta.licence(_wheelmeta.read_metadata(wheel, where))
    except ArtifactError:
        return ""


def _packages(path: Path, layout: Layout) -> dict[str, dict[str, Any]]:
    regions = layout.regions()
    if "lock/pylock.toml" not in regions:
        return {}
    lock = tomllib.loads(_member(path, layout, "lock/pylock.toml").decode())
    out: dict[str, dict[str, Any]] = {}
    for pkg in lock.get("packages", []):
        wheels = pkg.get("wheels", []) + ([pkg["sdist"]] if "sdist" in pkg else [])
        first = next((w["name"] for w in wheels if f"wheels/{w['name']}" in regions), None)
        out[pkg["name"]] = {
            "version": pkg["version"],
            "size": sum(int(w.get("size") or 0) for w in wheels),
            "licence": _licence(_member(path, layout, f"wheels/{first}"), first)
            if first and first.endswith(".whl")
            else "",
        }
    return out


def _images(path: Path, layout: Layout) -> dict[str, dict[str, Any]]:
    import json

    if "appliance.json" not in layout.regions():
        return {}
    manifest = json.loads(_member(path, layout, "appliance.json"))
    return {i["ref"]: i for i in manifest.get("images", [])}


def diff(old: Path, new: Path) -> dict[str, Any]:
    """A JSON-able changelog from ``old`` to ``new`` (neither is verified here: verify them first)."""
    layouts = []
    for p in (old, new):
        if not p.is_file():
            raise UsageError(f"{p}: no such file")
        try:
            layouts.append(read_layout(p))
        except FormatError as exc:
            raise UsageError(f"{p}: not a chiron appliance: {exc}") from None
    a, b = _packages(old, layouts[0]), _packages(new, layouts[1])
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
    ia, ib = _images(old, layouts[0]), _images(new, layouts[1])
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


def render(d: dict[str, Any]) -> str:
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
