"""``chiron report``: one self-contained HTML file of what an appliance carries and what changed, for the
people who decide whether it may cross into an enclave (often on a machine with no chiron and no network).

The file has its stylesheet and its charts (SVG) inline, no script, and a Content-Security-Policy that
forbids every fetch, so it shows the same on any browser, offline, and prints (a print stylesheet).
The appliance is verified first, as ``chiron extract`` does (``--root``/``--root-sha256``; with
``--store`` the store's own root), unless the report is asked not to: then it says so on every page.

Built twice from the same inputs, a report is the same bytes: nothing in it is "now" except the date
expiry is measured from (``as_of``, a day; ``--as-of`` or ``SOURCE_DATE_EPOCH`` fix it), and every list
is sorted. The package is cut along the work: ``gather`` (one appliance), ``store`` (the store's
versions and policy verdict), ``changes``, ``charts``, ``render`` (the Jinja2 templates, which the pages
of ``chiron serve`` share).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from chiron.archive.manifest import MANIFEST, MAX_MANIFEST, parse_manifest
from chiron.archive.reader import ArchiveReader
from chiron.core.clock import parse_iso
from chiron.core.fs import write_atomic
from chiron.core.text import printable
from chiron.engines.report.changes import changes
from chiron.engines.report.gather import Trust, VerifiedReading, appliance, opened
from chiron.engines.report.model import Appliance, Changes, Report
from chiron.engines.report.render import render
from chiron.engines.report.store import store_view
from chiron.errors import FormatError, UsageError

__all__ = [
    "Report",
    "ReportOptions",
    "ReportResult",
    "Trust",
    "VerifiedReading",
    "appliance",
    "as_of_today",
    "changes",
    "make_report",
    "render",
    "write_report",
]


@dataclass(frozen=True)
class ReportOptions:
    archive: Path
    output: Path
    against: Path | None = None
    store: Path | None = None
    root_file: Path | None = None
    root_sha256: str | None = None
    verify: bool = True
    as_of: date | None = None


@dataclass(frozen=True)
class ReportResult:
    output: Path
    report: Report
    size: int

    def as_dict(self) -> dict[str, Any]:
        """What ``chiron report --json`` prints (``chiron.report/1``): where the report is, what it found."""
        a, store = self.report.appliance, self.report.store
        return {
            "schema": "chiron.report/1",
            "output": str(self.output),
            "size": self.size,
            "appliance": {"name": a.name, "version": a.version, "sha256": a.sha256},
            "verified": a.verification.verified,
            "trust_anchor": a.verification.anchor,
            "as_of": self.report.as_of,
            "expiring": a.warnings,
            "changes": self.report.changes is not None,
            "policy_verdict": store.verdict.verdict if store is not None and store.verdict is not None else None,
        }


def as_of_today() -> datetime:
    """The day expiry is measured from: ``SOURCE_DATE_EPOCH``'s, else today's (UTC, at midnight)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            day = datetime.fromtimestamp(int(epoch), tz=UTC).date()
        except (ValueError, OverflowError, OSError):
            raise UsageError(f"SOURCE_DATE_EPOCH: {printable(epoch[:40])} is not a time in seconds") from None
    else:
        day = datetime.now(UTC).date()
    return datetime.combine(day, time(), tzinfo=UTC)


def _anchor(opts: ReportOptions) -> tuple[Path | None, str | None]:
    """--root / --root-sha256, else the store's first root (the store signs every version under it)."""
    if opts.root_file is not None or opts.root_sha256 is not None or opts.store is None:
        return opts.root_file, opts.root_sha256
    first = opts.store / "tuf" / "root" / "1.root.json"
    return (first, None) if first.is_file() else (None, None)


def _read(path: Path, opts: ReportOptions, as_of: datetime, reference_time: datetime | None = None) -> Appliance:
    root_file, root_sha256 = _anchor(opts)
    with opened(
        path, verify=opts.verify, root_file=root_file, root_sha256=root_sha256, reference_time=reference_time
    ) as (reading, trust, size, sha256):
        return appliance(reading, trust, file=path.name, size=size, sha256=sha256, as_of=as_of)


def _created(path: Path) -> datetime | None:
    """The creation time an appliance claims (read unverified: only to verify an older one as of then)."""
    try:
        with ArchiveReader(path) as reader:
            return parse_iso(parse_manifest(reader.read(MANIFEST, MAX_MANIFEST)).created)
    except (FormatError, ValueError):
        return None


def make_report(opts: ReportOptions) -> Report:
    """Read (and verify) the appliance, the one to compare with, and the store; nothing is written."""
    if opts.verify is False and (opts.root_file is not None or opts.root_sha256 is not None):
        raise UsageError("--unverified and --root/--root-sha256 exclude each other")
    as_of = datetime.combine(opts.as_of, time(), tzinfo=UTC) if opts.as_of else as_of_today()
    this = _read(opts.archive, opts, as_of)
    notes: list[str] = []
    diff: Changes | None = None
    if opts.against is not None:
        # An older release's metadata has often expired by now: it is verified as of the time it says it
        # was made (the signatures and every byte still have to check against the same anchor).
        when = _created(opts.against) if opts.verify else None
        old = _read(opts.against, opts, as_of, reference_time=when)
        if opts.verify and when is not None:
            notes.append(
                f"{opts.against.name} was verified as of its creation ({old.created}); its metadata may have expired"
            )
        diff = changes(old, this)
    view = store_view(opts.store, this.sha256) if opts.store is not None else None
    return Report(appliance=this, as_of=f"{as_of:%Y-%m-%d}", changes=diff, store=view, notes=tuple(notes))


def write_report(opts: ReportOptions) -> ReportResult:
    """Make the report and write it to ``opts.output`` atomically (never over the appliance itself)."""
    if opts.output.is_dir():
        raise UsageError(f"-o {opts.output}: is a directory", hint="give the report a file name, e.g. report.html")
    for src in (opts.archive, opts.against):
        if src is not None and (
            opts.output.absolute() == src.absolute() or (opts.output.exists() and os.path.samefile(opts.output, src))
        ):
            raise UsageError(f"-o {opts.output}: that is the appliance itself", hint="give the report another name")
    report = make_report(opts)
    html = render(report)
    write_atomic(opts.output, html)
    return ReportResult(opts.output, report, len(html))
