"""The end of a receive: what is being received (``Incoming``), and finishing it once every byte is
in the staging file: the bytes kept from earlier runs hashed again, the last structural checks, the
rename into place. Also whether a file already at the destination is the one being received."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from chiron.archive import delta as _delta
from chiron.archive.reader import ArchiveReader, open_regular, pread_exact, sha256_range
from chiron.archive.toolzip import check_zip
from chiron.engines.media.plan import Plan
from chiron.engines.media.staging import Staging
from chiron.engines.media.stream import Checker, pump
from chiron.errors import FormatError, VerificationError


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, end)`` of the whole, found at ``offset`` of the open source ``fd``."""

    path: Path
    fd: int
    offset: int
    start: int
    end: int
    volume: int | None = None  # its number, when the source is a volume


@dataclass
class Incoming:
    """What is to be received: the whole's plan and key, and where each of its ranges comes from."""

    kind: str  # appliance | delta
    key: str  # the staging's name: carried_sha256 (appliance), the delta's sha256 (its volumes), or
    # the sha256 of its header (a delta file)
    size: int
    file: str
    plan: Plan
    spans: list[Span]
    signature: Path | None = None
    whole_sha256: str | None = None  # a delta's volumes: the sha256 the whole must have


def matches(path: Path, incoming: Incoming) -> bool:
    """Whether the file at ``path`` is the one being received (so receiving it again is done).

    Every byte is hashed again against the signed plan: a file that merely carries the same metadata
    (a copy cut short or damaged, a file planted there) is another file, never "already received"."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size != incoming.size:
            return False
        if incoming.whole_sha256 is not None:
            return sha256_range(fd, 0, size) == incoming.whole_sha256
        if incoming.plan.complete:
            with Checker(incoming.plan.units) as checker:
                pump(checker, fd, 0, size, 0)
            return not checker.failed and checker.fed_all
        # A delta file: only its header is signed here; applying it rebuilds and verifies the whole.
        head = incoming.plan.units[0]
        return hashlib.sha256(pread_exact(fd, head.length, 0)).hexdigest() == incoming.key
    finally:
        os.close(fd)


def finish(st: Staging, incoming: Incoming, this_run: list[tuple[int, int]], output: Path) -> int:
    """Check the complete staging file and rename it to ``output``; the bytes kept from earlier runs
    (hashed again here) are returned. A kept unit that no longer matches is forgotten, so the next
    run receives it again."""
    kept = _subtract([(0, st.size)], this_run)
    plan = incoming.plan
    if plan.complete:
        for start, end in kept:
            _recheck(st, plan, start, end)
    if incoming.whole_sha256 is not None and sha256_range(st.fd, 0, st.size) != incoming.whole_sha256:
        st.discard()
        raise VerificationError(
            [f"the {incoming.file} assembled from its volumes does not hash to the sha256 they record"],
            hint="receive the volumes again",
        )
    problems = _structure(st.data, incoming.kind)
    if problems:
        st.discard()
        raise VerificationError(problems, hint="receive it again from another copy")
    os.fchmod(st.fd, 0o755 if incoming.kind == "appliance" else 0o644)
    os.fsync(st.fd)
    if st.signature.is_file():
        os.replace(st.signature, output.with_name(output.name + ".sig"))
    os.replace(st.data, output)
    st.discard()
    return sum(b - a for a, b in kept)


def _recheck(st: Staging, plan: Plan, start: int, end: int) -> None:
    units, problems = plan.units_for(start, end)
    if problems:  # a record chiron would not have written: receive that part again
        st.drop(start, end)
        st.checkpoint()
        raise VerificationError(
            [f"{st.state}: bytes {start}-{end} were recorded where no check can end: {problems[0]}"],
            hint="run the same command again with the medium that holds them",
        )
    with Checker(units) as checker:
        pump(checker, st.fd, start, end - start, start)
    if checker.bad:
        for unit, _got in checker.bad:
            st.drop(unit.offset, unit.end)
        st.checkpoint()
        unit = checker.bad[0][0]
        raise VerificationError(
            [f"{st.data}: {unit.describe()} no longer matches what an earlier run received and checked"],
            hint="run the same command again with the medium that holds it: only that part is received again",
        )


def _structure(path: Path, kind: str) -> list[str]:
    """What verify checks beyond the hashes: the tool zip walked strictly, or a delta's header."""
    try:
        if kind == "delta":
            _delta.read(path)
            return []
        with ArchiveReader(path) as reader:
            return check_zip(reader.fd, reader.layout)[1]
    except (FormatError, VerificationError) as exc:
        return exc.problems


def _subtract(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = ranges
    for a, b in minus:
        out = [r for x, y in out for r in ((x, min(y, a)), (max(x, b), y)) if r[1] > r[0]]
    return out
