"""The media section of benchmarks/run.py: receive and join against plain copies of the same bytes.

A 2 GiB appliance (a [[files]] member of random bytes) is received from another filesystem than the
target, as from a medium, two ways: from /dev/shm (tmpfs) to the work directory's disk (everything in
memory but the disk's flush: CPU-bound), and from the disk with its pages dropped from the page cache
before each run to /dev/shm (read once from a device, as from a medium). Side by side, interleaved,
each into an emptied directory: `chiron receive` (copy + verify in one pass, fsync'ed) against `cp`
alone, `cp` + `sync FILE` (the same durability as receive), and `cp` followed by `chiron verify`
(with and without the sync); `chiron join` of 4 volumes against `cat` of them + `sync FILE`. Wall
and CPU time (wait4), and peak RSS of receive at 2 GiB and at 256 MiB: flat in the size.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from helpers import ENV_311, LocalIndex, make_wheel, write_spec

Record = Callable[[str, str, str], None]
Timed = dict[str, tuple[float, float, int]]  # command -> (median wall s, median CPU s, peak RSS KiB)


def _appliance(work: Path, keys: Path, where: Path, mib: int, name: str) -> Path:
    import run

    wheels = work / "media-wheels"
    make_wheel(wheels, "beta", "1.0")
    index = LocalIndex(wheels)
    payload = where / f"{name}.payload"
    with payload.open("wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(mib):
            f.write(block)
    try:
        files = f'[[files]]\nsrc = "{payload}"\ndest = "payload.bin"\n'
        spec = write_spec(work / f"{name}-spec", keys=keys, index_url=index.url, requirements=["beta"],
                          environments=ENV_311, extra=files)  # fmt: skip
        out = where / f"{name}.pex"
        tool_wheels = str(run.REPO / "build/tool-wheels")
        subprocess.run([run.CHIRON, "build", str(spec), "-o", str(out), "--cache-dir", str(work / "cache"),
                        "--tool-wheels", tool_wheels], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    finally:
        index.close()
        payload.unlink()
    return out


def _interleaved(cmds: dict[str, tuple[list[str], Callable[[], None]]], repeat: int) -> Timed:
    """Each command ``repeat`` times, one of each per round after its setup: the median wall time, the
    median CPU time (user + system) and the largest peak RSS (KiB) of each, from wait4."""
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    rss: dict[str, int] = dict.fromkeys(cmds, 0)
    for _ in range(repeat):
        for key, (cmd, setup) in cmds.items():
            setup()
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _pid, status, usage = os.wait4(proc.pid, 0)
            wall[key].append(time.perf_counter() - start)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
            cpu[key].append(usage.ru_utime + usage.ru_stime)
            rss[key] = max(rss[key], usage.ru_maxrss)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), rss[k]) for k in cmds}


def _cold(path: Path) -> Callable[[], None]:
    """Drop ``path``'s pages from the page cache (they are clean: it was fsync'ed), so that the next
    read comes from the disk, as from a medium read once."""

    def drop() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    return drop


def bench_media(work: Path, keys: Path, record: Record, gib: float = 2.0) -> None:
    import run

    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free < 5 * gib * (1 << 30):
        record("media", "skipped: /dev/shm lacks room for the medium", "")
        return
    with tempfile.TemporaryDirectory(prefix="chiron-medium-", dir=shm) as tmp:
        memory = Path(tmp)
        app = _appliance(work, keys, memory, int(gib * 1024), "demo")
        small = _appliance(work, keys, memory, 256, "small")
        root = str(keys / "1.root.json")
        on_disk = work / "disc" / app.name  # a medium on another filesystem, read cold
        on_disk.parent.mkdir()
        subprocess.run(["sh", "-c", f"cp {app} {on_disk} && sync {on_disk}"], check=True)
        to_disk, to_memory = work / "received", memory / "received"
        size = app.stat().st_size
        vols = memory / "volumes"
        subprocess.run([run.CHIRON, "split", str(app), "--size", str(size // 4 + (64 << 20)), "-o", str(vols)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        parts = " ".join(sorted(str(p) for p in vols.glob("*.chv")))

        def clear(then: Callable[[], None] | None = None) -> Callable[[], None]:
            def setup() -> None:
                for d in (to_disk, to_memory):
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir()
                if then is not None:
                    then()
                # No command pays for the writeback of the one before it (each writes 2 GiB to disk).
                os.sync()

            return setup

        d, m = to_disk / app.name, to_memory / app.name
        verify = f"{run.CHIRON} verify {{}} --root {root}"
        t = _interleaved(
            {
                "cp": (["cp", str(app), str(d)], clear()),
                "cp+sync": (["sh", "-c", f"cp {app} {d} && sync {d}"], clear()),
                "cp+verify": (["sh", "-c", f"cp {app} {d} && {verify.format(d)}"], clear()),
                "cp+sync+verify": (["sh", "-c", f"cp {app} {d} && sync {d} && {verify.format(d)}"], clear()),
                "receive": ([run.CHIRON, "receive", str(app), "--to", str(to_disk), "--root", root], clear()),
                "cold cp": (["cp", str(on_disk), str(m)], clear(_cold(on_disk))),
                "cold cp+verify": (["sh", "-c", f"cp {on_disk} {m} && {verify.format(m)}"], clear(_cold(on_disk))),
                "cold receive": (
                    [run.CHIRON, "receive", str(on_disk), "--to", str(to_memory), "--root", root],
                    clear(_cold(on_disk)),
                ),
                "cat": (["sh", "-c", f"cat {parts} > {d} && sync {d}"], clear()),
                "join": ([run.CHIRON, "join", str(vols), "-o", str(d), "--root", root], clear()),
                "receive small": ([run.CHIRON, "receive", str(small), "--to", str(to_disk), "--root", root], clear()),
            },
            repeat=3,
        )
        clear()()
    _report(record, t, size, parts.count(" ") + 1)


def _report(record: Record, t: Timed, size: int, volumes: int) -> None:
    gibs = size / (1 << 30)

    def row(key: str, what: str) -> None:
        wall, cpu, _rss = t[key]
        record("media", what, f"{wall:.2f} s (CPU {cpu:.2f} s)")

    row("receive", f"chiron receive, {gibs:.2f} GiB, tmpfs -> disk, fsync'ed")
    row("cp", "cp, tmpfs -> disk (not fsync'ed)")
    row("cp+sync", "cp + sync FILE (durable, like receive)")
    row("cp+verify", "cp + chiron verify")
    row("cp+sync+verify", "cp + sync FILE + chiron verify (durable, like receive)")
    rx = t["receive"][0]
    record("media", "ratio receive / cp (target <= 1.1)", f"{rx / t['cp'][0]:.2f}x")
    record("media", "ratio receive / (cp + sync)", f"{rx / t['cp+sync'][0]:.2f}x")
    record("media", "ratio (cp + verify) / receive (target >= 1.8)", f"{t['cp+verify'][0] / rx:.2f}x")
    record("media", "ratio (cp + sync + verify) / receive", f"{t['cp+sync+verify'][0] / rx:.2f}x")
    row("cold receive", "chiron receive, disk (cold) -> tmpfs")
    row("cold cp", "cp, disk (cold) -> tmpfs")
    row("cold cp+verify", "cp + chiron verify, disk (cold) -> tmpfs")
    crx = t["cold receive"][0]
    record("media", "cold: ratio receive / cp (target <= 1.1)", f"{crx / t['cold cp'][0]:.2f}x")
    record("media", "cold: ratio (cp + verify) / receive (target >= 1.8)", f"{t['cold cp+verify'][0] / crx:.2f}x")
    row("join", f"chiron join of {volumes} volumes (tmpfs -> disk, fsync'ed)")
    row("cat", f"cat of the {volumes} volumes + sync FILE")
    record("media", "ratio join / (cat + sync)", f"{t['join'][0] / t['cat'][0]:.2f}x")
    record("media", f"peak RSS, receive of {gibs:.2f} GiB / of 0.25 GiB", f"{t['receive'][2] / 1024:.0f} MiB / "
           f"{t['receive small'][2] / 1024:.0f} MiB")  # fmt: skip
    record("media", f"peak RSS, join of {gibs:.2f} GiB", f"{t['join'][2] / 1024:.0f} MiB")
