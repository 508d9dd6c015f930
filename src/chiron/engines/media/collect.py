"""Finding a set's volumes: in any order, in several directories (one per medium), under any file
names. A volume is known by its header, not its name: what is missing, what belongs to another
appliance or version, and two copies of one volume that differ are all named before anything is
written."""

from __future__ import annotations

import filecmp
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from chiron.archive.volume import VolumeHeader, read_header, set_stem, volume_file
from chiron.errors import FormatError, Refused, UsageError, VerificationError


@dataclass(frozen=True)
class Found:
    path: Path
    header: VolumeHeader

    def describe(self) -> str:
        h = self.header
        return f"{self.path} (volume {h.number} of {h.count} of {h.label})"


@dataclass
class Gathered:
    """Every volume found, by set; and the files that look like volumes but cannot be read."""

    sets: dict[tuple[object, ...], list[Found]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    @property
    def volumes(self) -> list[Found]:
        return [f for found in self.sets.values() for f in found]


def gather(paths: list[Path]) -> Gathered:
    """The volumes among ``paths``: volume files, and the volumes in directories (not recursive;
    other files there, such as the manifest and the signature, are passed over)."""
    out = Gathered()
    sets: dict[tuple[object, ...], list[Found]] = defaultdict(list)
    for path in paths:
        named = not path.is_dir()
        for candidate in sorted(p for p in path.iterdir() if p.is_file()) if not named else [path]:
            try:
                header = read_header(candidate)
            except FormatError as exc:
                out.unreadable.append(f"{candidate}: a damaged volume: {exc.message}")
                continue
            if header is None:
                if named:
                    raise UsageError(f"{candidate}: not a chiron volume")
                continue
            sets[header.set_key].append(Found(candidate, header))
    out.sets = dict(sets)
    return out


def choose(gathered: Gathered, paths: list[Path]) -> tuple[list[Found], list[Found]]:
    """The set to join (the one of which most volumes were found) and the volumes of other sets.
    Two sets found equally often are refused: which one is meant cannot be guessed."""
    if not gathered.sets:
        more = f"; {gathered.unreadable[0]}" if gathered.unreadable else ""
        raise UsageError(f"no chiron volumes in {', '.join(map(str, paths))}{more}")
    ranked = sorted(gathered.sets.values(), key=lambda f: -len({v.header.number for v in f}))
    if len(ranked) > 1 and len({v.header.number for v in ranked[0]}) == len({v.header.number for v in ranked[1]}):
        sets = "; ".join(f"{f[0].header.label} ({f[0].path.name}, ...)" for f in ranked[:2])
        raise UsageError(
            f"volumes of more than one appliance or version in {', '.join(map(str, paths))}: {sets}",
            hint="put each set in a directory of its own",
        )
    return ranked[0], [f for found in ranked[1:] for f in found]


def unique(chosen: list[Found]) -> dict[int, Found]:
    """One volume per number; two copies of one volume are refused unless they are byte-identical."""
    by_number: dict[int, Found] = {}
    for f in chosen:
        seen = by_number.get(f.header.number)
        if seen is None:
            by_number[f.header.number] = f
        elif seen.header != f.header or not filecmp.cmp(seen.path, f.path, shallow=False):
            raise Refused(
                f"{seen.path} and {f.path} are both volume {f.header.number} of {f.header.count} of "
                f"{f.header.label}, but they differ",
                hint=f"check each with chiron verify, and remove the one that fails: {seen.path}, {f.path}",
            )
    return dict(sorted(by_number.items()))


def complete_set(chosen: list[Found], foreign: list[Found], unreadable: list[str]) -> list[Found]:
    """One volume per number, in order, tiling the whole file: or an error naming what is missing
    (and what was found instead), or two copies of one volume that differ."""
    by_number = unique(chosen)
    first = chosen[0].header
    missing = [n for n in range(1, first.count + 1) if n not in by_number]
    if missing:
        stem = set_stem(first.name, first.version, first.kind, first.file)
        names = ", ".join(f"{n} ({volume_file(stem, n, first.count)})" for n in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        others = "".join(f"; found instead: {f.describe()}" for f in foreign[:5])
        others += "".join(f"; {u}" for u in unreadable[:5])
        raise UsageError(f"missing volume(s) {names}{more} of {first.count} of {first.label}{others}")
    ordered = [by_number[n] for n in range(1, first.count + 1)]
    pos = 0
    for f in ordered:
        if f.header.offset != pos:
            raise VerificationError(
                [
                    f"{f.path}: volume {f.header.number} starts at byte {f.header.offset} of {first.file}, the volume "
                    f"before it ends at {pos} (headers edited?)"
                ]
            )
        pos = f.header.end
    if pos != first.size:
        raise VerificationError([f"the volumes of {first.label} end at byte {pos}, the whole is {first.size} bytes"])
    return ordered


def notes(foreign: list[Found], unreadable: list[str]) -> list[str]:
    """Warnings for what was found beside the set and left alone."""
    return [f"ignored {f.describe()}: not of the set being joined" for f in foreign] + [
        f"ignored {u}" for u in unreadable
    ]
