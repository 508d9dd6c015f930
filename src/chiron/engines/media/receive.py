"""``chiron receive``: copy an appliance, a delta or volumes off removable media (or out of a
diode's inbox) and verify them in the same pass.

What arrives is trusted first from what it carries (the TUF metadata, through the anchor), then
its bytes are hashed against the signed hashes while they are written into a staging file
(staging.py): volumes of one set land there from any number of media and runs, each checked as it
is copied. A read error names the offset and the member and keeps what was checked, and the same
command resumes; a full disk leaves nothing. When every byte is there, the bytes kept from earlier
runs are hashed again, the tool zip is walked, and the file is renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive import delta as _delta
from chiron.archive.carried import Carried
from chiron.archive.layout import appliance_suffix
from chiron.archive.manifest import MANIFEST, parse_manifest
from chiron.archive.reader import ArchiveReader, open_regular, pread_exact
from chiron.archive.volume import VolumeReader, read_header, safe_name, set_stem
from chiron.core import progress as _progress
from chiron.core.fs import fsync_dir
from chiron.engines.media.check import read_problem, trust_volume
from chiron.engines.media.collect import Found, choose, gather, unique
from chiron.engines.media.files import copy_signature, signature_beside
from chiron.engines.media.landing import Incoming, Span, finish, matches
from chiron.engines.media.plan import DELTA_HEADER, Plan, Unit, opaque
from chiron.engines.media.staging import Staging, staging
from chiron.engines.media.stream import Checker, ReadFailed, pump
from chiron.engines.verify import VerifyReport
from chiron.errors import EnvironmentProblem, FormatError, UsageError, VerificationError
from chiron.trust.anchor import Anchor, anchor_from_options
from chiron.trust.client import Untrusted, trust_archive

CHECKPOINT = 1 << 30  # what a crash (not an error: those are recorded) may cost to receive again


@dataclass
class ReceiveResult:
    source: Path
    directory: Path
    kind: str = "appliance"
    name: str | None = None
    version: str | None = None
    file: str = ""
    size: int = 0
    output: Path | None = None
    count: int | None = None  # volumes in the set (None: a whole file)
    received_volumes: list[int] = field(default_factory=list)
    missing_volumes: list[int] = field(default_factory=list)
    received_bytes: int = 0
    resumed_bytes: int = 0
    trust_anchor: str = ""
    root_fingerprint: str = ""
    signature: Path | None = None
    notices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        volumes = None
        if self.count is not None:
            volumes = {"count": self.count, "received": self.received_volumes, "missing": self.missing_volumes}
        return {
            "schema": "chiron.receive/1",
            "source": str(self.source),
            "directory": str(self.directory),
            "kind": self.kind,
            "appliance": {"name": self.name, "version": self.version},
            "file": self.file,
            "size": self.size,
            "complete": self.output is not None,
            "output": str(self.output) if self.output else None,
            "volumes": volumes,
            "received_bytes": self.received_bytes,
            "resumed_bytes": self.resumed_bytes,
            "trust_anchor": self.trust_anchor,
            "root_fingerprint": self.root_fingerprint,
            "signature": str(self.signature) if self.signature else None,
            "notices": self.notices,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def receive(
    source: Path,
    to: Path,
    *,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    anchor: Anchor | None = None,
    show_progress: bool = False,
) -> ReceiveResult:
    """Receive ``source`` (an appliance, a delta, a volume, or a directory holding one of these or a
    set's volumes) into the directory ``to``."""
    started = time.monotonic()
    anchor = anchor if anchor is not None else anchor_from_options(root_file, root_sha256)
    result = ReceiveResult(source, to)
    with ExitStack() as stack:
        incoming = _incoming(source, anchor, result, stack)  # refused before anything is created
        to.mkdir(parents=True, exist_ok=True)
        result.kind, result.size, result.file = incoming.kind, incoming.size, incoming.file
        output = to / incoming.file
        if output.exists() and not _already(output, incoming, result):
            raise UsageError(
                f"{output} already exists and is another file", hint="move it away, or receive into another directory"
            )
        if result.output is None:
            _receive(incoming, to, output, result, show_progress)
    if result.output is not None and signature_beside(output).is_file():
        result.signature = signature_beside(output)
    result.seconds = time.monotonic() - started
    return result


def _already(output: Path, incoming: Incoming, result: ReceiveResult) -> bool:
    """Whether ``output`` is already the file being received (a receive run again after it finished)."""
    try:
        same = matches(output, incoming)
    except (FormatError, UsageError, VerificationError, OSError, ReadFailed):
        return False
    if same:
        result.output = output
        result.notices.append(f"{output} was already received")
        result.missing_volumes = []
    return same


def _receive(incoming: Incoming, to: Path, output: Path, result: ReceiveResult, show_progress: bool) -> None:
    # Keyed by kind too: a delta's key is what its (unsigned) header says, and must never name an appliance's staging.
    with staging(to, f"{incoming.kind}:{incoming.key}", incoming.size, incoming.file) as st:
        result.notices += st.notices
        if incoming.signature is not None:  # whichever medium carries it: kept until the file is finished
            copy_signature(incoming.signature, st.signature)
        todo = [(span, st.gaps(span.start, span.end)) for span in incoming.spans]
        total = sum(b - a for _s, gaps in todo for a, b in gaps)
        this_run: list[tuple[int, int]] = []
        with _progress.bar(total, f"receiving {incoming.file}", enabled=show_progress) as bar:
            for span, gaps in todo:
                for a, b in gaps:
                    got = _copy(st, incoming.plan, span, a, b, bar.advance)
                    result.received_bytes += got
                    this_run.append((a, a + got))
                if span.volume is not None and not st.gaps(span.start, span.end):
                    st.parts.append(span.volume)
                    if gaps:  # received by this run, not already there
                        result.received_volumes.append(span.volume)
        st.checkpoint()
        if result.count is not None:
            result.missing_volumes = [n for n in range(1, result.count + 1) if n not in st.parts]
        if st.complete:
            result.resumed_bytes = finish(st, incoming, this_run, output)
            result.output = output
    if result.output is not None:
        fsync_dir(to)


def _copy(st: Staging, plan: Plan, span: Span, start: int, end: int, advance: Callable[[int], None]) -> int:
    """Copy ``[start, end)`` of the whole from ``span``'s source into the staging, checked; record
    what was checked at every checkpoint and whatever stops the copy. Returns the bytes received."""
    units, problems = plan.units_for(start, end)
    if problems:
        raise VerificationError([f"{span.path}: {p}" for p in problems])
    checker = Checker(units)
    try:
        failure = _pump(st, checker, span, start, end, advance)
    except BaseException:  # Ctrl-C, a write error: keep what was checked, for the next run
        checker.close()
        st.add(start, checker.verified_to)
        with contextlib.suppress(OSError):
            st.checkpoint()
        raise
    checker.close()
    st.add(start, checker.verified_to)
    st.checkpoint()
    if checker.bad:
        unit = checker.bad[0][0]
        against = "the signed targets" if plan.signed else "the sha256 recorded for it"
        raise VerificationError(
            [f"{span.path}: {unit.describe()}: sha256 does not match {against} (a damaged copy)"],
            hint="receive it from another copy of the medium; what was checked before it is kept, so the same "
            "command resumes there",
        )
    if failure is not None:
        raise EnvironmentProblem(
            read_problem(span.path, failure, plan),
            hint=f"what was checked before it is kept in {st.root}: clean the medium or use another drive "
            "(or another copy), then run the same command again to resume",
        )
    return checker.verified_to - start


def _pump(
    st: Staging, checker: Checker, span: Span, start: int, end: int, advance: Callable[[int], None]
) -> ReadFailed | None:
    """The copy, CHECKPOINT bytes at a time; after each, what is checked so far is made durable and
    recorded on another thread (the copy does not wait for the disk). A read error is returned."""
    with ThreadPoolExecutor(max_workers=1) as saver:
        pending: Future[None] | None = None
        pos = start
        while pos < end and not checker.failed:
            seg = min(end, pos + CHECKPOINT)
            src = span.offset + (pos - span.start)
            try:
                pump(checker, span.fd, src, seg - pos, pos, dst_fd=st.fd, dst_offset=pos, advance=advance)
            except ReadFailed as exc:
                return exc
            pos = seg
            if pos < end and (pending is None or pending.done()):
                # A checkpoint that fails only records less: the one after the copy reports the error.
                pending = saver.submit(st.checkpoint, (start, checker.verified_to))
    return None


def _incoming(source: Path, anchor: Anchor, result: ReceiveResult, stack: ExitStack) -> Incoming:
    """What ``source`` holds, trusted as far as it can be, opened for reading."""
    if source.is_dir():
        gathered = gather([source])
        if gathered.sets:
            chosen, foreign = choose(gathered, [source])
            result.warnings += [f"ignored {f.describe()}: not of the set being received" for f in foreign]
            return _volumes(chosen, anchor, result, stack, inbox=True)
        return _whole(_only_file(source), anchor, result, stack)
    header = read_header(source)  # a missing file, a FIFO, a device: a UsageError naming it
    if header is not None:
        return _volumes([Found(source, header)], anchor, result, stack)
    return _whole(source, anchor, result, stack)


def _only_file(directory: Path) -> Path:
    """The one appliance or delta in ``directory`` (the signature and manifest beside it aside)."""
    found = []
    for p in sorted(x for x in directory.iterdir() if x.is_file() and not x.name.endswith((".sig", ".txt"))):
        with contextlib.suppress(FormatError, UsageError, VerificationError):
            if _delta.is_delta(p):
                found.append(p)
                continue
            with ArchiveReader(p):
                found.append(p)
    if len(found) != 1:
        what = "no appliance, delta or volume" if not found else f"{len(found)} appliances or deltas"
        raise UsageError(f"{directory}: holds {what}", hint="name the file to receive: chiron receive FILE --to DIR")
    return found[0]


def _volumes(
    chosen: list[Found], anchor: Anchor, result: ReceiveResult, stack: ExitStack, *, inbox: bool = False
) -> Incoming:
    """A set's volumes at hand: the set trusted through the first, every volume checked to belong.
    In a directory (an inbox a diode or a guard writes to), a volume that cannot be read yet (still
    arriving, or damaged) is passed over with a warning: it stays missing, and a later run takes it."""
    vols: list[VolumeReader] = []
    problems: list[str] = []
    for f in unique(chosen).values():
        try:
            vols.append(stack.enter_context(VolumeReader(f.path)))
        except FormatError as exc:
            problems.append(f"{f.path}: {exc.message}")
    if problems and (not inbox or not vols):
        raise VerificationError(problems, hint="nothing was received; copy the volume again")
    result.warnings += [f"passed over {p} (still arriving? receive it again later)" for p in problems]
    h = vols[0].header
    result.name, result.version, result.count = h.name, h.version, h.count
    spans = [Span(v.path, v.fd, v.data_offset, v.header.offset, v.header.end, v.header.number) for v in vols]
    sig = vols[0].path.parent / f"{set_stem(h.name, h.version, h.kind, h.file)}.sig"
    if h.kind == "delta":
        result.notices.append(_DELTA_NOTICE)
        plan = opaque(h.size, [(v.header.offset, v.header.length, v.header.data_sha256) for v in vols])
        return Incoming("delta", h.sha256, h.size, h.file, plan, spans, sig, whole_sha256=h.sha256)
    report = VerifyReport(path=str(vols[0].path))
    trusted = trust_volume(vols[0], anchor, report)
    _record_trust(result, report)
    if trusted is None:
        raise VerificationError(report.problems, hint="nothing was received")
    key = vols[0].carried_sha256()
    problems = [f"{v.path}: carries other metadata than {vols[0].path}" for v in vols[1:] if v.carried_sha256() != key]
    if problems:
        raise VerificationError(problems, hint="nothing was received")
    file = appliance_file(report.name, report.version, vols[0].layout.tool_format, key)
    return Incoming("appliance", key, h.size, file, trusted.plan, spans, sig)


def appliance_file(name: str | None, version: str | None, tool_format: str, key: str) -> str:
    """What a received appliance is called, from what is signed only: ``NAME-VERSION`` and the suffix
    of its tool format. Neither a volume's header nor the medium's file name is signed: a forged one
    could pass it off as another release (``demo-9.9.pex``), start with ``-``, or take the name of
    the staging directory. The same appliance lands under the same name, whole or in volumes. One
    signed without ``appliance.json`` (chiron's builder always adds it) is named by its ``key``."""
    return set_stem(name, version, "appliance", f"appliance-{key[:16]}") + appliance_suffix(tool_format)


def _whole(path: Path, anchor: Anchor, result: ReceiveResult, stack: ExitStack) -> Incoming:
    """A whole appliance (trusted through its own metadata from the anchor) or a delta."""
    fd = open_regular(path)
    stack.callback(os.close, fd)
    if _delta.is_delta(path):
        d = _delta.read(path)
        result.name, result.version = d.name, d.version
        result.notices.append(_DELTA_NOTICE)
        head = pread_exact(fd, d.data_offset, 0)
        units, pos = [Unit(0, len(head), DELTA_HEADER, 0, hashlib.sha256(head).hexdigest())], d.data_offset
        for e in d.extents:
            if e.carried:
                units.append(Unit(pos, e.length, e.name, pos, e.sha256))
                pos += e.length
        key = hashlib.sha256(head).hexdigest()
        return Incoming("delta", key, pos, safe_name(path.name), Plan(pos, units), [Span(path, fd, 0, 0, pos)], None)
    try:
        reader = stack.enter_context(ArchiveReader(path))
    except FormatError as exc:
        raise VerificationError([f"{path}: not an appliance, a delta or a volume: {exc.message}"]) from None
    carried = Carried(reader)  # read once: what TUF checks is what the plan and the key are made of
    trust = trust_archive(carried, anchor)
    report = VerifyReport(path=str(path))
    report.record_trust(trust)
    _record_trust(result, report)
    if isinstance(trust, Untrusted):
        raise VerificationError(report.problems, hint="nothing was received")
    plan = Plan.for_appliance(reader.layout, trust.targets, dict(carried.members))
    if plan.problems:
        raise VerificationError(plan.problems, hint="nothing was received")
    _name_from(carried.members, result)
    spans = [Span(path, reader.fd, 0, 0, reader.size)]
    key = carried.sha256()
    file = appliance_file(result.name, result.version, reader.layout.tool_format, key)
    return Incoming("appliance", key, reader.size, file, plan, spans, signature_beside(path))


def _record_trust(result: ReceiveResult, report: VerifyReport) -> None:
    result.trust_anchor, result.root_fingerprint = report.trust_anchor, report.root_fingerprint
    result.notices += report.notices
    result.warnings += report.warnings
    if report.name is not None:
        result.name, result.version = report.name, report.version


def _name_from(carried: list[tuple[str, bytes]], result: ReceiveResult) -> None:
    data = dict(carried).get(MANIFEST)
    if data is not None:
        with contextlib.suppress(FormatError):
            m = parse_manifest(data)
            result.name, result.version = m.name, m.version


_DELTA_NOTICE = (
    "a delta is not signed: its bytes are checked against the sha256 its header records (damage on the way); "
    "the host verifies the appliance it rebuilds from it"
)
