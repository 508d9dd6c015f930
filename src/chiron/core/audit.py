"""The host's audit log: append-only JSON lines, hash-chained so that an edited, inserted or removed
entry is detected (``chiron audit verify``).

Each entry carries ``seq`` (1, 2, ...) and ``prev``, the sha256 of the previous line's bytes. The
file ``audit.head`` records the last entry's seq and hash, so removing entries from the END is
detected too. Anyone who can rewrite the state directory can rewrite the whole chain: copy entries
off the host (e.g. to syslog) where that matters; see docs/host.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _head_path(log: Path) -> Path:
    return log.with_name(log.name.removesuffix(".jsonl") + ".head")


def _last_line(log: Path) -> bytes | None:
    """The last complete line of the log (reads only its tail)."""
    try:
        with log.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            back = min(size, 1 << 16)
            f.seek(size - back)
            tail = f.read(back)
    except FileNotFoundError:
        return None
    complete = tail.split(b"\n")[:-1]  # drop the text after the last newline (empty or partial)
    return complete[-1] if complete and complete[-1] else None


def tail(log: Path) -> tuple[int, str] | None:
    """``(seq, sha256)`` of the log's last complete entry; None when the log is missing or empty. An
    unchained (damaged) last line counts as seq 0."""
    last = _last_line(log)
    if last is None:
        return None
    try:
        seq = int(json.loads(last)["seq"])
    except (ValueError, KeyError, TypeError):
        seq = 0
    return seq, _line_hash(last)


def entry_hash(log: Path, seq: int) -> str | None:
    """The sha256 of the entry numbered ``seq``, or None when the log has no such entry."""
    try:
        with log.open("rb") as f:
            for line in f:
                try:
                    if int(json.loads(line)["seq"]) == seq:
                        return _line_hash(line)
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        return None
    return None


def append(log: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` chained to the previous one; fsync the log, then update the head."""
    last = _last_line(log)
    if last is None:
        seq, prev = 1, GENESIS
    else:
        try:
            seq = int(json.loads(last)["seq"]) + 1
        except (ValueError, KeyError, TypeError):
            seq = 1  # an unchained (damaged) last line: audit verify reports it; keep logging anyway
        prev = _line_hash(last)
    record = {**entry, "seq": seq, "prev": prev}
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    head = _head_path(log)
    tmp = head.with_name(f".{head.name}.tmp")
    tmp.write_text(json.dumps({"seq": seq, "sha256": _line_hash(line)}) + "\n")
    os.replace(tmp, head)
    return record


def read_head(log: Path) -> dict[str, Any] | None:
    """The head the log records (``{"seq": N, "sha256": HEX}``), None when there is none or it is damaged.

    Cheap (one small file): what a host's receipt reports, so that the mirror side can see the log grow.
    """
    try:
        head = json.loads(_head_path(log).read_text())
        return {"seq": int(head["seq"]), "sha256": str(head["sha256"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class AuditReport:
    path: str
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.audit-verify/1",
            "path": self.path,
            "ok": self.ok,
            "entries": self.entries,
            "problems": self.problems,
            "notices": self.notices,
        }


def verify_log(log: Path) -> AuditReport:
    """Walk the chain from the first entry; report every break, naming the entry."""
    report = AuditReport(path=str(log))
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        report.problems.append(f"{log}: the audit log is missing")
        return report
    if data and not data.endswith(b"\n"):
        report.problems.append(f"{log}: the last entry is incomplete (an interrupted or truncated write)")
        data = data[: data.rfind(b"\n") + 1]
    prev, expect_seq, last_hash = GENESIS, 1, GENESIS
    for lineno, line in enumerate(data.splitlines(), start=1):
        try:
            entry = json.loads(line)
            seq, chained = int(entry["seq"]), str(entry["prev"])
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"{log}: line {lineno} is not a chained audit entry (edited or inserted)")
            prev, expect_seq = _line_hash(line), expect_seq + 1
            continue
        if seq != expect_seq:
            report.problems.append(
                f"{log}: entry {seq} at line {lineno}, expected entry {expect_seq} (entries removed?)"
            )
        elif chained != prev:
            report.problems.append(
                f"{log}: entry {seq} does not chain to the entry before it (entry {seq - 1} edited or removed)"
            )
        prev = last_hash = _line_hash(line)
        expect_seq = seq + 1
        report.entries += 1
    head_file = _head_path(log)
    try:
        head = json.loads(head_file.read_text())
        head_seq, head_hash = int(head["seq"]), str(head["sha256"])
    except FileNotFoundError:
        if report.entries:
            report.problems.append(f"{head_file}: missing (cannot tell whether entries were removed from the end)")
        return report
    except (ValueError, KeyError, TypeError):
        report.problems.append(f"{head_file}: damaged")
        return report
    if head_seq > report.entries:
        report.problems.append(
            f"{log}: the head records {head_seq} entries but the log holds {report.entries} "
            "(entries removed from the end)"
        )
    elif head_seq == report.entries and head_hash != last_hash:
        report.problems.append(f"{log}: the last entry differs from the one the head recorded (edited)")
    elif head_seq < report.entries:
        report.notices.append(f"the head lags the log by {report.entries - head_seq} entry(ies) (interrupted update)")
    return report
