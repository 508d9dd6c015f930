"""``chiron join``: the whole file from its volumes, verified while it is written (one read of each
volume), fsynced, and renamed into place only when every byte matched.

For an appliance, the volumes' carried metadata goes through TUF from the anchor once (every volume
must carry the same), every byte is hashed against the signed targets on its way to the disk, and
the tool zip is walked strictly at the end, as verify walks it: the result is a verified appliance,
byte-identical to the one that was split, so its detached ``.sig`` verifies too. A delta's volumes
are checked against the sha256 their headers record, the whole against the delta's (nothing in a
delta is signed: the host verifies what it rebuilds from it).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive import delta as _delta
from chiron.archive.reader import ArchiveReader
from chiron.archive.toolzip import check_zip
from chiron.archive.volume import VolumeReader, set_stem
from chiron.core import progress as _progress
from chiron.core.fs import fsync_dir, temp_beside
from chiron.engines.media.check import Trusted, read_problem, trust_volume
from chiron.engines.media.collect import choose, complete_set, gather, notes
from chiron.engines.media.files import copy_signature, ensure_space, is_no_space, no_space
from chiron.engines.media.plan import Plan, Unit, opaque
from chiron.engines.media.stream import Checker, ReadFailed, pump
from chiron.engines.verify import VerifyReport
from chiron.errors import EnvironmentProblem, FormatError, UsageError, VerificationError
from chiron.trust.anchor import Anchor, anchor_from_options


@dataclass
class JoinResult:
    output: Path
    kind: str
    name: str | None
    version: str | None
    size: int
    volumes: list[str]
    bytes_hashed: int = 0
    trust_anchor: str = ""
    root_fingerprint: str = ""
    signature: Path | None = None
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.join/1",
            "output": str(self.output),
            "kind": self.kind,
            "appliance": {"name": self.name, "version": self.version},
            "size": self.size,
            "volumes": self.volumes,
            "bytes_hashed": self.bytes_hashed,
            "trust_anchor": self.trust_anchor,
            "root_fingerprint": self.root_fingerprint,
            "signature": str(self.signature) if self.signature else None,
            "notices": self.notices,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def join(
    inputs: list[Path],
    output: Path,
    *,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    anchor: Anchor | None = None,
    show_progress: bool = False,
) -> JoinResult:
    """Join the set of volumes found in ``inputs`` (directories or volume files) into ``output``."""
    started = time.monotonic()
    anchor = anchor if anchor is not None else anchor_from_options(root_file, root_sha256)
    gathered = gather(inputs)
    chosen, foreign = choose(gathered, inputs)
    ordered = complete_set(chosen, foreign, gathered.unreadable)
    first = ordered[0].header
    if any(output.resolve() == f.path.resolve() for f in gathered.volumes):
        raise UsageError(f"{output}: is one of the volumes; choose another -o")
    if output.is_dir():
        raise UsageError(f"{output}: is a directory; give the file to write, such as -o {output / first.file}")
    result = JoinResult(output, first.kind, first.name, first.version, first.size, [str(f.path) for f in ordered])
    result.warnings += notes(foreign, gathered.unreadable)
    with ExitStack() as stack:
        vols = [stack.enter_context(VolumeReader(f.path)) for f in ordered]
        for f, v in zip(ordered, vols, strict=True):
            if v.header != f.header:  # replaced since it was gathered: its ranges were checked for another
                raise UsageError(f"{f.path}: changed while it was being read; run the same command again")
        plan, units = _plan(vols, anchor, result)
        output.parent.mkdir(parents=True, exist_ok=True)
        ensure_space(output.parent, first.size, output.name)
        _write(vols, plan, units, output, result, show_progress)
    stem = set_stem(first.name, first.version, first.kind, first.file)
    for directory in dict.fromkeys(f.path.parent for f in ordered):
        result.signature = copy_signature(directory / f"{stem}.sig", output.with_name(output.name + ".sig"))
        if result.signature is not None:
            break
    result.seconds = time.monotonic() - started
    return result


def _plan(vols: list[VolumeReader], anchor: Anchor, result: JoinResult) -> tuple[Plan, list[Unit]]:
    """The plan of the whole and its units: the set trusted once through the first volume (every
    other must carry the same bytes), every volume's range checked against where it may end."""
    first = vols[0]
    if first.header.kind == "delta":
        result.notices.append(
            "a delta is not signed: its volumes are checked against the sha256 their headers record; the host "
            "verifies the appliance it rebuilds from it"
        )
        plan = opaque(first.header.size, [(v.header.offset, v.header.length, v.header.data_sha256) for v in vols])
        return plan, plan.units
    report = VerifyReport(path=str(first.path))
    trusted: Trusted | None = trust_volume(first, anchor, report)
    result.trust_anchor, result.root_fingerprint = report.trust_anchor, report.root_fingerprint
    result.notices += report.notices
    result.warnings += report.warnings
    if trusted is None:
        raise VerificationError(report.problems, hint="the volumes' metadata is not trusted; nothing was written")
    carried = first.carried_sha256()
    problems: list[str] = []
    for v in vols[1:]:
        if v.carried_sha256() != carried:
            problems.append(f"{v.path}: carries other metadata than {first.path} (volumes of two builds mixed?)")
        problems += [f"{v.path}: {p}" for p in trusted.plan.units_for(v.header.offset, v.header.end)[1]]
    if problems:
        raise VerificationError(problems, hint="nothing was written")
    units, _ = trusted.plan.units_for(0, first.header.size)
    return trusted.plan, units


def _write(
    vols: list[VolumeReader], plan: Plan, units: list[Unit], output: Path, result: JoinResult, show_progress: bool
) -> None:
    """Copy every volume's bytes into a temporary file beside ``output``, hashing them on the way;
    rename it into place only when every unit matched and the whole passes the last checks."""
    size = vols[0].header.size
    delta = vols[0].header.kind == "delta"
    try:
        with temp_beside(output, 0o644 if delta else 0o755) as (fd, tmp):
            with (
                _progress.bar(size, f"joining {output.name}", enabled=show_progress) as bar,
                Checker(units, whole=delta) as checker,
            ):
                for v in vols:
                    h = v.header
                    try:
                        pump(
                            checker,
                            v.fd,
                            v.data_offset,
                            h.length,
                            h.offset,
                            dst_fd=fd,
                            dst_offset=h.offset,
                            advance=bar.advance,
                        )
                    except ReadFailed as exc:
                        raise EnvironmentProblem(
                            read_problem(v.path, exc, None if delta else plan),
                            hint="copy that volume from its medium again (or from another copy); nothing was written",
                        ) from None
                    if checker.failed:
                        break
            _check_result(vols, checker, delta)
            os.fsync(fd)
            _check_whole(tmp, delta)
            os.replace(tmp, output)
    except OSError as exc:
        if is_no_space(exc):
            raise no_space(output.parent, size, output.name) from None
        raise
    fsync_dir(output.parent)
    result.bytes_hashed = size


def _check_result(vols: list[VolumeReader], checker: Checker, delta: bool) -> None:
    problems = []
    for unit, _got in checker.bad:
        vol = next((v for v in vols if v.header.offset <= unit.offset < v.header.end), vols[-1])
        if delta:
            problems.append(f"{vol.path}: its bytes do not match the sha256 its header records (a damaged copy)")
        else:
            problems.append(f"{vol.path}: {unit.describe()}: sha256 does not match the signed targets (a damaged copy)")
    if not problems and not checker.fed_all:  # the checks of complete_set make this unreachable; kept as a guard
        problems.append(f"the volumes end at byte {checker.position}, before the end of the file")
    if delta and not problems and checker.whole != vols[0].header.sha256:
        problems.append(f"the joined delta does not hash to the sha256 its volumes record ({vols[0].header.sha256})")
    if problems:
        raise VerificationError(problems, hint="copy the named volume again from its medium; nothing was written")


def _check_whole(path: Path, delta: bool) -> None:
    """What verify checks beyond the hashes: the tool zip walked strictly (an appliance), or the
    delta's header and carried lengths (a delta)."""
    if delta:
        _delta.read(path)
        return
    try:
        with ArchiveReader(path) as reader:
            problems = check_zip(reader.fd, reader.layout)[1]
    except FormatError as exc:
        problems = [exc.message]
    if problems:
        raise VerificationError(problems, hint="nothing was written")
