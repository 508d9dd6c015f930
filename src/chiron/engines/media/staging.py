"""Where ``chiron receive`` assembles a whole file, across runs: ``DIR/.chiron-receive/KEY/`` holds
``data`` (the whole file's size, written in place as ranges arrive) and ``state.json`` (the byte ranges received
and checked so far). A run that is interrupted (a read error, Ctrl-C, a damaged copy) records what
it checked; the next run resumes there. KEY names the build (the sha256 of what every volume
carries), so volumes from several media, or the appliance itself, all land in one staging.

The state is ours but lives on disk between runs: it is read strictly, and when damaged it is
discarded (the data is received again). The kept bytes are hashed again before the file is
finished, so nothing is trusted for having been written by an earlier run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chiron.core import filelock
from chiron.core.fs import read_small, write_atomic
from chiron.core.text import canonical_json, parse_json
from chiron.engines.media.files import ensure_space, is_no_space, no_space
from chiron.errors import EnvironmentProblem, UsageError

FORMAT = "chiron-receive/1"
STAGING = ".chiron-receive"
MAX_STATE = 1 << 20


@dataclass
class Staging:
    """One whole file being received; ``done`` holds sorted, disjoint [start, end) ranges."""

    root: Path
    size: int
    file: str
    done: list[tuple[int, int]] = field(default_factory=list)
    parts: list[int] = field(default_factory=list)  # the volumes received whole, by number
    fd: int = -1
    notices: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def signature(self) -> Path:
        """The detached signature found beside a source, kept until the file is finished."""
        return self.root / "signature"

    @property
    def received(self) -> int:
        return sum(b - a for a, b in self.done)

    @property
    def complete(self) -> bool:
        return self.done == [(0, self.size)]

    def add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` as received and checked (merged with its neighbours)."""
        with self._lock:
            self.done = _merged([*self.done, (start, end)])

    def drop(self, start: int, end: int) -> None:
        """Forget ``[start, end)``: kept bytes there no longer match."""
        out: list[tuple[int, int]] = []
        for a, b in self.done:
            out += [r for r in ((a, min(b, start)), (max(a, end), b)) if r[1] > r[0]]
        self.done = out

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not received yet."""
        out: list[tuple[int, int]] = []
        pos = start
        for a, b in self.done:
            if b <= pos or a >= end:
                continue
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < end:
            out.append((pos, end))
        return out

    def checkpoint(self, extra: tuple[int, int] | None = None) -> None:
        """Make the received bytes durable, then record them (with ``extra``, a range being copied
        that is checked so far): a crash between the two loses the record of the last bytes, never
        records bytes that are not on the disk. Safe to call from another thread than the copy's."""
        with self._lock:
            done = _merged([*self.done, extra]) if extra is not None else list(self.done)
            os.fdatasync(self.fd)
            body = {
                "format": FORMAT,
                "size": self.size,
                "file": self.file,
                "done": [list(r) for r in done],
                "parts": sorted(set(self.parts)),
            }
            write_atomic(self.state, canonical_json(body))

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges covering the same bytes (empty ones dropped)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


@contextlib.contextmanager
def staging(directory: Path, key: str, size: int, file: str) -> Iterator[Staging]:
    """The staging of the whole file ``key`` names in ``directory``, created (room for it checked)
    or resumed, held under a lock so that two receives never write it at once. A disk too full for
    it leaves nothing behind."""
    root = directory / STAGING / hashlib.sha256(key.encode()).hexdigest()[:32]
    root.mkdir(parents=True, exist_ok=True)
    st = Staging(root, size, file)
    try:
        with filelock.hold(root / "lock", "receive", hint="another chiron receive is writing this file; wait for it"):
            _open(st, directory)
            yield st
    except OSError as exc:
        if not is_no_space(exc):
            raise
        st.discard()
        raise no_space(directory, size, file) from None
    except EnvironmentProblem:  # no room for it (checked before anything was written)
        if not st.done:
            st.discard()
        raise
    finally:
        st.close()
        with contextlib.suppress(OSError):
            (directory / STAGING).rmdir()  # gone once nothing is staged there


_MOVE_AWAY = "move it away (or receive into another directory), then run the same command again"


def _open(st: Staging, directory: Path) -> None:
    """Resume the staging's data file and record, or create the file (sparse, the whole's size);
    either way the disk must have room for what is still to come."""
    created = not st.data.exists()
    loaded = None if created else _load(st)
    if loaded is None and not created:
        st.notices.append(f"{st.root}: its record of what was received is damaged or missing: receiving anew")
    st.done, st.parts = loaded or ([], [])
    ensure_space(directory, st.size - st.received, st.file)
    # A link, FIFO or device planted in the staging directory must not make chiron write through it.
    try:
        st.fd = os.open(st.data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UsageError(f"{st.data}: is a symbolic link, not chiron's staging file", hint=_MOVE_AWAY) from None
    if not stat.S_ISREG(os.fstat(st.fd).st_mode):
        raise UsageError(f"{st.data}: is not a regular file, not chiron's staging file", hint=_MOVE_AWAY)
    if created or os.fstat(st.fd).st_size != st.size:
        st.done, st.parts = [], []
        os.ftruncate(st.fd, st.size)


def _load(st: Staging) -> tuple[list[tuple[int, int]], list[int]] | None:
    """The ranges and volumes an earlier run recorded; None when there is no record or it is not
    one chiron wrote for this file."""
    try:
        obj = parse_json(read_small(st.state, MAX_STATE, "receive state"), str(st.state))
    except (ValueError, UsageError):  # missing, too large, not JSON: start over
        return None
    if not isinstance(obj, dict) or set(obj) != {"format", "size", "file", "done", "parts"} or obj["format"] != FORMAT:
        return None
    done, parts = obj["done"], obj["parts"]
    # Not the file name: the key (the kind and the sha256 of the signed carried metadata) pins the
    # content, finish() hashes the kept bytes again, and a name chosen by an older chiron (or by the
    # other way in: whole file or volumes) must not throw away discs already received.
    if obj["size"] != st.size or not isinstance(done, list) or not isinstance(parts, list):
        return None
    if not all(type(n) is int and n > 0 for n in parts):
        return None
    out: list[tuple[int, int]] = []
    for r in done:
        if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r) and 0 <= r[0] < r[1] <= st.size):
            return None
        out.append((r[0], r[1]))
    if any(a[1] >= b[0] for a, b in itertools.pairwise(out)):
        return None  # not sorted, overlapping or unmerged: not what add() writes
    return out, parts
