"""Checking one volume alone: its carried metadata through TUF from the anchor, the whole's layout
against the signed targets (as verify checks an appliance's), then every byte of its range against
the signed hashes. Also the part join and receive share: opening a volume's set as trusted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.archive.manifest import MANIFEST, MAX_MANIFEST, parse_manifest
from chiron.archive.volume import VolumeHeader, VolumeReader
from chiron.core import progress as _progress
from chiron.core.text import plain
from chiron.engines.media.plan import Plan
from chiron.engines.media.stream import Checker, ReadFailed, pump
from chiron.engines.verify import VerifyReport
from chiron.errors import FormatError, UsageError
from chiron.trust.anchor import Anchor, anchor_from_options
from chiron.trust.client import TrustedMetadata, Untrusted, trust_archive


def volume_info(header: VolumeHeader) -> dict[str, Any]:
    """What a volume says of itself, for reports (``volume`` in chiron.verify/1)."""
    return {
        "kind": header.kind,
        "number": header.number,
        "count": header.count,
        "offset": header.offset,
        "length": header.length,
        "file": header.file,
        "whole_size": header.size,
        "whole_sha256": header.sha256,
    }


def delta_refused(path: Path, header: VolumeHeader) -> UsageError:
    return UsageError(
        f"{path} is volume {header.number} of {header.count} of a {header.label}: a delta is not signed, so "
        "nothing can verify it before a host rebuilds the appliance from it",
        hint=f"chiron receive {path} --to DIR checks it against the sha256 its header records as it copies it",
    )


@dataclass
class Trusted:
    """A volume's set, trusted: the TUF result and the plan of the whole (None when not trusted:
    the report says why)."""

    metadata: TrustedMetadata
    plan: Plan


def trust_volume(vol: VolumeReader, anchor: Anchor, report: VerifyReport) -> Trusted | None:
    """Run TUF over what the volume carries, build the whole's plan against the signed targets, and
    check the header's name and version against the signed ``appliance.json``. Problems go to the
    report; None unless every check passed."""
    result = trust_archive(vol, anchor)
    report.record_trust(result)
    report.members = len(vol.layout.members)
    if isinstance(result, Untrusted):
        return None
    carried = {name: vol.read(name) for name, _length in vol.header.carried}
    plan = Plan.for_appliance(vol.layout, result.targets, carried)
    report.problems += plan.problems
    if MANIFEST in carried and not plan.problems:
        try:
            if len(carried[MANIFEST]) > MAX_MANIFEST:
                raise FormatError(f"member {MANIFEST}: more than the {MAX_MANIFEST} bytes allowed for it")
            manifest = parse_manifest(carried[MANIFEST], f"member {MANIFEST}")
        except FormatError as exc:
            report.problems.append(exc.message)
            return None
        report.manifest = manifest.raw
        report.name, report.version = manifest.name, manifest.version
        h = vol.header
        if (h.name, h.version) != (manifest.name, manifest.version):
            report.problems.append(
                f"volume header names {plain(str(h.name))} {plain(str(h.version))}, but the volume carries the "
                f"signed metadata of {plain(manifest.name)} {plain(manifest.version)} (header edited?)"
            )
    return None if report.problems else Trusted(result, plan)


def verify_volume(
    path: Path,
    *,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    anchor: Anchor | None = None,
    show_progress: bool = False,
) -> VerifyReport:
    """Verify one volume alone; the report's ``ok`` says whether every byte it holds is signed."""
    started = time.monotonic()
    if anchor is None:
        anchor = anchor_from_options(root_file, root_sha256)
    report = VerifyReport(path=str(path))
    try:
        vol = VolumeReader(path)
    except FormatError as exc:
        report.problems.append(f"volume: {exc.message}")
        report.seconds = time.monotonic() - started
        return report
    with vol:
        h = vol.header
        if h.kind == "delta":
            raise delta_refused(path, h)
        report.size, report.volume = vol.size, volume_info(h)
        trusted = trust_volume(vol, anchor, report)
        if trusted is not None:
            _hash_range(vol, trusted.plan, report, show_progress)
    report.ok = not report.problems
    report.seconds = time.monotonic() - started
    return report


def _hash_range(vol: VolumeReader, plan: Plan, report: VerifyReport, show_progress: bool) -> None:
    """Every byte of the volume's range against its units; problems name the bytes and the member."""
    h = vol.header
    units, problems = plan.units_for(h.offset, h.end)
    report.problems += problems
    if problems:
        return
    with _progress.bar(h.length, f"verifying {vol.path.name}", enabled=show_progress) as bar, Checker(units) as checker:
        try:
            pump(checker, vol.fd, vol.data_offset, h.length, h.offset, advance=bar.advance)
        except ReadFailed as exc:
            report.problems.append(read_problem(vol.path, exc, plan))
    report.bytes_hashed = h.length
    for unit, _got in checker.bad:
        report.problems.append(f"{unit.describe()}: sha256 does not match the signed targets (modified or damaged)")


def read_problem(path: Path, exc: ReadFailed, plan: Plan | None) -> str:
    """``PATH: read error at offset N (byte K of member M): Input/output error``."""
    where = f" ({plan.where(exc.whole_offset)})" if plan is not None else ""
    if exc.error is None:
        return f"{path}: ends early at offset {exc.offset}{where}: the copy is truncated or still being written"
    return f"{path}: read error at offset {exc.offset}{where}: {exc.error.strerror or exc.error}"
