"""One pass over the bytes: read, write (or not), and hash against the plan's units on other cores.

The reading thread reads a chunk, writes it where it goes, and hands it to the hashing threads; it
never waits for a hash. Each unit is hashed by one thread (units go round-robin), so the chunks of
one unit are hashed in order while different units (pieces of one large member too) are hashed in
parallel; hashlib releases the GIL. A fixed ring of buffers bounds memory whatever the size, and
makes the reader wait when the hashers fall behind. This is how receive and join cost one copy's
time: the hashing overlaps the I/O instead of following it (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from chiron.core.fs import WriteBehind, advise
from chiron.engines.media.plan import Unit

# 1 MiB: a chunk is read, hashed and written while it is still in the CPU's caches (larger ones measured slower).
CHUNK = 1 << 20
_EMPTY = hashlib.sha256(b"").hexdigest()


@dataclass
class ReadFailed(Exception):
    """Reading the source failed (``error``) or it ended early (``error`` None) at ``offset`` of the
    source, which is ``whole_offset`` of the whole file."""

    offset: int
    whole_offset: int
    error: OSError | None


class _Token:
    """Returns a buffer to the free ring once every slice of it has been hashed."""

    def __init__(self, buf: bytearray, free: queue.SimpleQueue[bytearray], count: int) -> None:
        self.buf, self.free, self.count = buf, free, count
        self.lock = threading.Lock()

    def release(self) -> None:
        with self.lock:
            self.count -= 1
            last = self.count == 0
        if last:
            self.free.put(self.buf)


_Item = tuple[int, memoryview, bool, _Token] | None


class Checker:
    """Hashes a stream of the whole's bytes, fed in order, against ``units`` (which tile a range).

    ``bad`` lists each unit that did not match with the digest found; ``verified_to`` is the end of
    the run of good units from the range's start (what a resumed copy may keep); ``whole`` is the
    sha256 of everything fed, when asked for (a delta, which has nothing better to check).
    """

    def __init__(self, units: list[Unit], *, workers: int | None = None, whole: bool = False) -> None:
        self.units = units
        self.start = units[0].offset if units else 0
        self._pos = self.start
        self._ui = 0
        self.bad: list[tuple[Unit, str]] = []
        self._good = [False] * len(units)
        self._next_good = 0
        self._lock = threading.Lock()
        self._hashers: dict[int, hashlib._Hash] = {}
        count = max(1, min(4, workers or os.cpu_count() or 2))
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(4 * count + 4):
            self._free.put(bytearray(CHUNK))
        self._queues: list[queue.SimpleQueue[_Item]] = [queue.SimpleQueue() for _ in range(count)]
        self._whole = hashlib.sha256() if whole else None
        self._whole_q: queue.SimpleQueue[tuple[memoryview, _Token] | None] = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._work, args=(q,), daemon=True) for q in self._queues]
        if whole:
            self._threads.append(threading.Thread(target=self._work_whole, daemon=True))
        for t in self._threads:
            t.start()
        self._skip_empty()

    # ---------------------------------------------------------------- the reading side

    def buffer(self) -> bytearray:
        """A free buffer to read into (waits while every buffer is being hashed)."""
        return self._free.get()

    def give_back(self, buf: bytearray) -> None:
        self._free.put(buf)

    @property
    def failed(self) -> bool:
        return bool(self.bad or self._errors)

    @property
    def fed_all(self) -> bool:
        """Whether every unit was fed to its end (a run that stopped early did not)."""
        return self._ui >= len(self.units)

    @property
    def position(self) -> int:
        return self._pos

    def feed(self, offset: int, buf: bytearray, n: int) -> None:
        """Hand ``n`` bytes of ``buf``, the whole's bytes at ``offset``, to the hashers (they give the
        buffer back when done)."""
        if offset != self._pos:
            raise ValueError(f"fed offset {offset}, expected {self._pos}")
        view = memoryview(buf)
        slices: list[tuple[int, int, int, bool]] = []
        done = 0
        while done < n:
            if self._ui >= len(self.units):
                raise ValueError(f"fed bytes past the end of the units at offset {offset + done}")
            u = self.units[self._ui]
            take = min(n - done, u.end - (offset + done))
            last = offset + done + take == u.end
            slices.append((self._ui, done, take, last))
            done += take
            if last:
                self._ui += 1
                self._skip_empty()
        token = _Token(buf, self._free, len(slices) + (self._whole is not None))
        for ui, at, take, last in slices:
            self._queues[ui % len(self._queues)].put((ui, view[at : at + take], last, token))
        if self._whole is not None:
            self._whole_q.put((view[:n], token))
        self._pos += n

    def _skip_empty(self) -> None:
        while self._ui < len(self.units) and self.units[self._ui].length == 0:
            self._record(self._ui, _EMPTY)
            self._ui += 1

    # ---------------------------------------------------------------- the hashing side

    def _work(self, q: queue.SimpleQueue[_Item]) -> None:
        while (item := q.get()) is not None:
            ui, view, last, token = item
            try:
                h = self._hashers.get(ui)
                if h is None:
                    h = self._hashers[ui] = hashlib.sha256()
                h.update(view)
                if last:
                    self._record(ui, self._hashers.pop(ui).hexdigest())
            except BaseException as exc:
                self._errors.append(exc)
            finally:
                view.release()
                token.release()

    def _work_whole(self) -> None:
        whole = self._whole or hashlib.sha256()  # only started when there is one
        while (item := self._whole_q.get()) is not None:
            view, token = item
            whole.update(view)
            view.release()
            token.release()

    def _record(self, ui: int, digest: str) -> None:
        unit = self.units[ui]
        with self._lock:
            if digest != unit.sha256:
                self.bad.append((unit, digest))
                return
            self._good[ui] = True
            while self._next_good < len(self._good) and self._good[self._next_good]:
                self._next_good += 1

    @property
    def verified_to(self) -> int:
        """The end of the good units counted from the start: every byte before it matched."""
        with self._lock:
            return self.units[self._next_good - 1].end if self._next_good else self.start

    @property
    def whole(self) -> str:
        return self._whole.hexdigest() if self._whole is not None else ""

    def close(self) -> None:
        """Wait for every fed byte to be hashed; raise what a hashing thread raised."""
        for q in self._queues:
            q.put(None)
        if self._whole is not None:
            self._whole_q.put(None)
        for t in self._threads:
            t.join()
        if self._errors:
            raise self._errors[0]
        self.bad.sort(key=lambda b: b[0].offset)

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pump(
    checker: Checker,
    src_fd: int,
    src_offset: int,
    length: int,
    whole_offset: int,
    *,
    dst_fd: int | None = None,
    dst_offset: int = 0,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Copy ``length`` bytes of ``src_fd`` at ``src_offset`` (the whole's bytes at ``whole_offset``)
    to ``dst_fd`` at ``dst_offset`` (nowhere when None), feeding every byte to ``checker``. Stops
    early once the checker has found a bad unit; ReadFailed when the source cannot be read."""
    done = 0
    behind = WriteBehind(dst_fd, dst_offset) if dst_fd is not None else None
    advise(src_fd, src_offset, length, "SEQUENTIAL")  # a larger read-ahead: the source is read once, in order
    while done < length and not checker.failed:
        buf = checker.buffer()
        want = min(len(buf), length - done)
        try:
            n = os.preadv(src_fd, [memoryview(buf)[:want]], src_offset + done)
        except OSError as exc:
            checker.give_back(buf)
            raise ReadFailed(src_offset + done, whole_offset + done, exc) from None
        if n <= 0:
            checker.give_back(buf)
            raise ReadFailed(src_offset + done, whole_offset + done, None)
        if dst_fd is not None:
            try:
                _pwrite_all(dst_fd, memoryview(buf)[:n], dst_offset + done)
            except BaseException:
                checker.give_back(buf)
                raise
        checker.feed(whole_offset + done, buf, n)
        done += n
        if behind is not None:
            behind.wrote(dst_offset + done)
        if advance is not None:
            advance(n)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
