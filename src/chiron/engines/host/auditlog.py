"""The host's audit glue: who did what and with which result, hash-chained in ``state/audit.jsonl``,
with the last entry's seq and hash also kept beside ``current`` (``PREFIX/audit.head``).

The copy beside ``current`` is what a state restore does not roll back: when the log in a restored
state directory is behind it, ``audit verify`` says entries were lost, and the next entry records the
loss in the chain itself (``lost_entries``), so it stays visible after the head has moved on.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from chiron.core import audit as _audit
from chiron.core.fs import write_atomic
from chiron.core.hoststate import AuditHead, damaged, dump, format_time, read_model
from chiron.engines.host.paths import PRIVATE_DIR, PUBLIC_DIR, Paths, ensure_dir, naming, now
from chiron.errors import HostStateError


def _check_regular(paths: Paths) -> None:
    """The log must be a regular file: a FIFO in its place would block every operation for ever."""
    if (os.path.lexists(paths.audit) and not paths.audit.is_file()) or paths.audit.is_symlink():
        raise damaged(paths.audit, "is not a regular file")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _outside_head(paths: Paths) -> AuditHead | None:
    try:
        return read_model(AuditHead, paths.audit_head)
    except HostStateError:
        return None  # damaged: audit verify reports it; logging goes on and rewrites it


def _last_seq(paths: Paths) -> int:
    """The highest seq of a chained entry in the log (0 when there is none)."""
    last = 0
    try:
        with paths.audit.open("rb") as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line)["seq"]))
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return last


def _lost(paths: Paths, head: AuditHead | None) -> dict[str, int] | None:
    """The entries the log lacks compared with the head kept beside ``current`` (None when it holds
    the entry that head records)."""
    if head is None or head.seq == 0 or _audit.entry_hash(paths.audit, head.seq) == head.sha256:
        return None
    last = _last_seq(paths)
    return {"after": min(last, head.seq - 1), "through": head.seq}


def audit(paths: Paths, op: str, result: str, **fields: Any) -> None:
    """Append one hash-chained entry to the audit log: who, when, what, result."""
    entry = {"time": format_time(now()), "user": _user(), "pid": os.getpid(), "op": op, "result": result, **fields}
    ensure_dir(paths.state, PRIVATE_DIR, follow=True)
    _check_regular(paths)
    lost = _lost(paths, _outside_head(paths))
    if lost is not None:
        entry["lost_entries"] = lost
    with naming(paths.audit, "cannot append to the audit log"):
        _audit.append(paths.audit, entry)
    tail = _audit.tail(paths.audit)
    if tail is not None and paths.prefix.is_dir():
        ensure_dir(paths.prefix, PUBLIC_DIR, follow=True)
        with naming(paths.audit_head, "cannot write"):
            write_atomic(paths.audit_head, dump(AuditHead(seq=tail[0], sha256=tail[1])))


def audit_verify(prefix: Path, state_dir: Path | None) -> _audit.AuditReport:
    """``chiron audit verify``: the chain and its head, and the head kept beside ``current``."""
    paths = Paths.make(prefix, state_dir)
    _check_regular(paths)
    report = _audit.verify_log(paths.audit)
    try:
        head = read_model(AuditHead, paths.audit_head)
    except HostStateError as exc:
        report.problems.append(exc.message)
        return report
    if head is not None and paths.audit.exists() and _lost(paths, head) is not None:
        last = _last_seq(paths)
        if last < head.seq:
            report.problems.append(
                f"{paths.audit}: entries after {last} were lost: {paths.audit_head} records {head.seq} "
                "(state restored from a backup?)"
            )
        else:
            report.problems.append(
                f"{paths.audit}: entry {head.seq} differs from the one {paths.audit_head} records "
                "(entries replaced: state restored from a backup?)"
            )
    report.notices += _recorded_losses(paths)
    return report


def _recorded_losses(paths: Paths) -> list[str]:
    """Losses an earlier entry recorded (after a restore): still worth a notice."""
    out = []
    try:
        with paths.audit.open("rb") as f:
            for line in f:
                if b'"lost_entries"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                    lost = entry["lost_entries"]
                    out.append(
                        f"entries {lost['after'] + 1} to {lost['through']} were lost before entry {entry['seq']} "
                        "(state restored from a backup); that entry recorded it"
                    )
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return out
