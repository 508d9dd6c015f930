"""The checks a stream of an appliance's bytes must pass: its layout cut into units, each with the
sha256 it must have, tiling the file.

A unit is a signed target that has no piece hashes (whole), one signed piece of a target that has
them, or a region every volume carries (the shebang, ``appliance.json``, the TUF metadata, the index
with its footer): the carried copy is checked first (against a signed target, through TUF, or
structurally), so any part of such a region can be checked against the same part of the copy, and
a volume may end anywhere inside it. Anywhere else a volume may end only between units: that is
how every byte of every volume stays covered by a signed hash (ADR 0011).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from chiron.archive.layout import INDEX_EXTENT, SHEBANG_TARGET, Layout, is_metadata_file
from chiron.archive.manifest import MANIFEST
from chiron.core.text import plain
from chiron.engines.coverage import check_coverage, signed_pieces
from chiron.trust.client import TrustedTarget


@dataclass(frozen=True)
class Unit:
    """``length`` bytes at ``offset`` of the whole that must hash to ``sha256``."""

    offset: int
    length: int
    region: str  # the member or format region it lies in
    region_offset: int  # where that region starts
    sha256: str
    carried: bool = False  # a carried region: may be cut anywhere
    piece: int | None = None  # which signed piece, for a target with pieces
    region_length: int = 0  # a carried region's whole length (a cut unit is shorter)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def describe(self) -> str:
        """``member NAME`` (``piece K of member NAME``, ``bytes A-B of member NAME``), escaped."""
        what = _REGION_NAMES.get(self.region) or f"member {plain(self.region)}"
        if self.piece is not None:
            return f"piece {self.piece} of {what}"
        start = self.offset - self.region_offset
        if self.carried and (start or self.length < self.region_length):
            return f"bytes {start}-{start + self.length} of {what}"
        return what


DELTA_HEADER = "_delta/header"
VOLUME_BYTES = ""  # a delta volume's range: checked whole against its header's sha256
_REGION_NAMES = {INDEX_EXTENT: "the index and footer", DELTA_HEADER: "the delta's header", VOLUME_BYTES: "its bytes"}


class Plan:
    """The units of one whole file, in file order, and where a volume may end.

    ``problems`` lists what makes the layout unfit to be checked at all (a region that is not a
    signed target of its kind and length, a carried copy that does not match its signed hash);
    callers report them and check nothing further. ``signed``: the hashes are signed targets (an
    appliance), not a delta's own records. ``complete``: the units tile the whole file (a delta's
    plan from some of its volumes covers only those).
    """

    def __init__(
        self, size: int, units: list[Unit], problems: list[str] | None = None, *, signed: bool = False
    ) -> None:
        self.size = size
        self.units = units
        self.problems = problems or []
        self.signed = signed
        self._offsets = [u.offset for u in units]
        self._carried: dict[str, bytes] = {}
        ends = [0, *(u.end for u in units)]
        self.complete = (
            bool(units) and ends[-1] == size and all(u.offset == e for u, e in zip(units, ends, strict=False))
        )

    @classmethod
    def for_appliance(
        cls, layout: Layout, targets: dict[str, TrustedTarget], carried: dict[str, bytes] | None = None
    ) -> Plan:
        """The plan of an appliance whose signed targets are ``targets``. ``carried`` holds the bytes
        of the carried regions (their copies, already checked); without it (split, which checks
        nothing) each counts as one unit with no hash to check."""
        carried = carried or {}
        todo, problems = check_coverage(layout, targets)
        units: list[Unit] = []
        for name, offset, length in all_regions(layout):
            if name in (SHEBANG_TARGET, MANIFEST, INDEX_EXTENT) or is_metadata_file(name):
                data = carried.get(name)
                sha = hashlib.sha256(data).hexdigest() if data is not None else ""
                units.append(Unit(offset, length, name, offset, sha, carried=True, region_length=length))
                if name in todo and data is not None and sha != targets[name].sha256:
                    problems.append(f"member {plain(name)}: sha256 does not match the signed targets (modified)")
            elif name in todo:
                units += _target_units(name, offset, length, targets[name], problems)
            else:  # not a signed target of its kind and length: check_coverage named it
                units.append(Unit(offset, length, name, offset, ""))
        plan = cls(layout.size, units, problems, signed=True)
        plan._carried = carried
        return plan

    def units_for(self, start: int, end: int) -> tuple[list[Unit], list[str]]:
        """The units covering ``[start, end)``, a carried unit cut to the range (its hash then that
        of the same bytes of the carried copy); a problem for every other unit the range cuts."""
        out: list[Unit] = []
        problems: list[str] = []
        i = bisect.bisect_left(self._offsets, start)
        if i > 0 and self.units[i - 1].end > start:
            i -= 1
        while i < len(self.units) and self.units[i].offset < end:
            u = self.units[i]
            i += 1
            if u.offset >= start and u.end <= end:
                out.append(u)
            elif u.carried:
                out.append(self._cut(u, max(u.offset, start), min(u.end, end)))
            else:
                edge = start if u.offset < start else end
                problems.append(
                    f"a volume boundary at offset {edge} cuts {u.describe()}, which has no signed hash for "
                    "part of it (not a volume chiron split makes)"
                )
        return out, problems

    def _cut(self, u: Unit, start: int, end: int) -> Unit:
        data = self._carried.get(u.region)
        sha = hashlib.sha256(data[start - u.region_offset : end - u.region_offset]).hexdigest() if data else ""
        return Unit(start, end - start, u.region, u.region_offset, sha, True, None, u.region_length)

    def cut(self, pos: int, limit: int) -> int:
        """The furthest offset in ``(pos, limit]`` where a volume that starts at ``pos`` may end (the
        end of the file always may); ``pos`` itself when none can (a unit longer than the room)."""
        if limit >= self.size:
            return self.size
        i = bisect.bisect_right(self._offsets, limit) - 1
        u = self.units[i]
        return limit if u.offset == limit or u.carried else max(u.offset, pos)

    def largest_uncut(self) -> Unit | None:
        """The longest unit a volume must hold whole (it decides the smallest volume size)."""
        whole = [u for u in self.units if not u.carried]
        return max(whole, key=lambda u: u.length) if whole else None

    def where(self, offset: int) -> str:
        """What lies at ``offset`` of the whole (``byte K of member NAME``), for messages."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        if i < 0 or offset >= self.size:
            return f"offset {offset}, past the end of the file"
        u = self.units[i]
        name = "the index" if u.region == INDEX_EXTENT else f"member {plain(u.region)}"
        return f"byte {offset - u.region_offset} of {name}"


def all_regions(layout: Layout) -> list[tuple[str, int, int]]:
    """Every region of the file in file order, the index and footer included: (name, offset, length)."""
    regions = [(r.name, r.offset, r.length) for r in layout.spans()]
    regions.insert(-1, (INDEX_EXTENT, layout.index_offset, layout.zip_offset - layout.index_offset))
    return regions


def _target_units(name: str, offset: int, length: int, target: TrustedTarget, problems: list[str]) -> list[Unit]:
    """A signed target's units: one per signed piece, or the whole target."""
    pieces = signed_pieces(target, length)
    if pieces is None:
        problems.append(f"member {plain(name)}: its signed piece hashes are malformed")
        return [Unit(offset, length, name, offset, target.sha256)]
    if not pieces:
        return [Unit(offset, length, name, offset, target.sha256)]
    size = int(target.custom["pieces"]["size"])
    return [
        Unit(offset + k * size, min(size, length - k * size), name, offset, digest, piece=k)
        for k, digest in enumerate(pieces)
    ]


def opaque(size: int, ranges: Iterable[tuple[int, int, str]] = ()) -> Plan:
    """A plan of ranges (offset, length, sha256): a delta's volumes, each checked against the sha256
    its header records. With no ranges, one range that may be cut anywhere and is checked against
    nothing (how split cuts a delta: nothing in a delta is signed)."""
    units = [Unit(off, n, VOLUME_BYTES, off, sha) for off, n, sha in ranges]
    return Plan(size, units or [Unit(0, size, VOLUME_BYTES, 0, "", carried=True, region_length=size)])
