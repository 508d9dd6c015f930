"""The changelog between two appliances as the report read them: packages added, removed, upgraded or
downgraded (by PEP 440 order), licence changes, and images whose digest changed.

Both sides come from ``gather`` (verified reads unless the report was asked not to verify), so the
changelog compares exactly what the two reports show; ``chiron diff`` prints the same facts as text.
"""

from __future__ import annotations

from packaging.version import InvalidVersion
from packaging.version import Version as Pep440

from chiron.engines.report.model import Appliance, Changes, ImageChange, PackageChange, PackageRow


def changes(old: Appliance, new: Appliance) -> Changes:
    a = {p.name: p for p in old.packages}
    b = {p.name: p for p in new.packages}
    out: list[PackageChange] = []
    for name in sorted(set(a) | set(b)):
        was, now = a.get(name), b.get(name)
        kind = _kind(was, now)
        if kind is None:
            continue
        out.append(
            PackageChange(
                name=name,
                kind=kind,
                old_version=was.version if was else None,
                new_version=now.version if now else None,
                old_licence=was.licence if was else None,
                new_licence=now.licence if now else None,
                size_change=(now.size if now else 0) - (was.size if was else 0),
            )
        )
    ia = {i.ref: i.digest for i in old.images}
    ib = {i.ref: i.digest for i in new.images}
    images = [
        ImageChange(
            ref, "added" if ref not in ia else "removed" if ref not in ib else "changed", ia.get(ref), ib.get(ref)
        )
        for ref in sorted(set(ia) | set(ib))
        if ia.get(ref) != ib.get(ref)
    ]
    return Changes(old=old, packages=tuple(out), images=tuple(images))


def _kind(was: PackageRow | None, now: PackageRow | None) -> str | None:
    if was is None:
        return "added"
    if now is None:
        return "removed"
    if was.version != now.version:
        try:
            return "upgraded" if Pep440(now.version) > Pep440(was.version) else "downgraded"
        except InvalidVersion:
            return "changed"
    if {f.sha256 for f in was.files} != {f.sha256 for f in now.files}:
        return "rebuilt"  # the same version with other files (a new wheel for a platform, a rebuilt one)
    if was.licence != now.licence:
        return "licence"
    return None
