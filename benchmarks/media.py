"""The media section of benchmarks/run.py: receive and join against plain copies of the same bytes.

A 2 GiB appliance (a [[files]] member of random bytes) is received from another filesystem than the
target, as from a medium, three ways: from /dev/shm (tmpfs) to the work directory's disk (everything
in memory but the disk's flush: CPU-bound), from the disk with its pages dropped from the page cache
before each run to /dev/shm (read once from a device), and from that disk read at a USB stick's
speed (a blkio throttle on a cgroup; root only, skipped otherwise). Side by side, interleaved, each
into an emptied directory: `chiron receive` (copy + verify in one pass, fsync'ed) against `cp`
alone, `cp` + `sync FILE` (the same durability as receive), and `cp` followed by `chiron verify`
(with and without the sync); `chiron join` of 4 volumes against `cat` of them + `sync FILE`. Wall
and CPU time (wait4), and peak RSS of receive at 2 GiB and at 256 MiB: flat in the size.

chiron runs as a host runs it: the tool the appliance carries, from the venv pex makes for it (the
development .venv also holds the test dependencies, whose imports cost ~0.2 s per command).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from helpers import ENV_311, LocalIndex, make_wheel, write_spec

Record = Callable[[str, str, str], None]
Commands = dict[str, tuple[list[str], Callable[[], None]]]
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


def _interleaved(cmds: Commands, repeat: int) -> Timed:
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


def _tool(app: Path, work: Path) -> str:
    """The chiron ``app`` carries, in the venv pex makes for it on its first run: what a host runs."""
    root = work / "pex-root-media"
    env = dict(os.environ, PEX_ROOT=str(root))
    subprocess.run([str(app), "--help"], check=True, stdout=subprocess.DEVNULL, env=env)
    (tool,) = root.glob("venvs/*/*/*/bin/chiron")
    return str(tool)


def _disk_of(path: Path) -> str:
    """MAJOR:MINOR of the disk ``path`` is on (a partition's disk: throttles apply to whole disks)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysfs = Path("/sys/dev/block") / dev
    if (sysfs / "partition").exists():
        return (sysfs.resolve().parent / "dev").read_text().strip()
    return dev


@contextlib.contextmanager
def _throttled(path: Path, bps: int) -> Iterator[list[str] | None]:
    """A command prefix that runs a command in a cgroup whose reads of ``path``'s disk are limited to
    ``bps`` bytes a second (cgroup v1 blkio, or v2 io.max); None where this cannot be set up (not root,
    no such controller, not a block device)."""
    v1, v2 = Path("/sys/fs/cgroup/blkio"), Path("/sys/fs/cgroup")
    group: Path | None = None
    ready = False  # only once the throttle is set: unthrottled rows must never pass for throttled ones
    try:
        dev = _disk_of(path)
        if (v1 / "blkio.throttle.read_bps_device").is_file():
            group = v1 / f"chiron-bench-{os.getpid()}"
            group.mkdir()
            (group / "blkio.throttle.read_bps_device").write_text(f"{dev} {bps}")
        elif "io" in (v2 / "cgroup.subtree_control").read_text().split():
            group = v2 / f"chiron-bench-{os.getpid()}"
            group.mkdir()
            (group / "io.max").write_text(f"{dev} rbps={bps}")
        ready = group is not None and (group / "cgroup.procs").is_file()
    except OSError:
        pass
    try:
        yield ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"] if ready else None
    finally:
        if group is not None:
            with contextlib.suppress(OSError):
                group.rmdir()


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
        on_disk = work / "disc" / app.name  # a medium on another filesystem, read cold
        on_disk.parent.mkdir()
        subprocess.run(["sh", "-c", f"cp {app} {on_disk} && sync {on_disk}"], check=True)
        vols = memory / "volumes"
        size = app.stat().st_size
        subprocess.run([run.CHIRON, "split", str(app), "--size", str(_Bench.volume_size(app)), "-o", str(vols)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        b = _Bench(_tool(app, work), str(keys / "1.root.json"), work / "received", memory / "received")
        count = len(list(vols.glob("*.chv")))
        # 5 rounds: this VM's memory (a balloon reporting free pages to the host, DAMON reclaim) makes
        # the system time of any command that allocates gigabytes vary by up to 2x from run to run.
        t = _interleaved(b.commands(app, small, on_disk, vols), repeat=5)
        with _throttled(on_disk, USB_BPS) as prefix:
            if prefix is None:
                record("media", f"skipped: reads at {USB_BPS // 10**6} MB/s (a cgroup read throttle needs root)", "")
            else:
                t |= _interleaved(b.throttled(prefix, on_disk), repeat=3)
        b.clear()()
    _report(record, t, size, count)


USB_BPS = 250 * 10**6  # a fast USB 3 stick's sequential read


class _Bench:
    """The commands compared, each with its setup: emptied target directories, a medium read cold."""

    def __init__(self, chiron: str, root: str, to_disk: Path, to_memory: Path) -> None:
        self.chiron, self.root, self.to_disk, self.to_memory = chiron, root, to_disk, to_memory

    def clear(self, then: Callable[[], None] | None = None) -> Callable[[], None]:
        def setup() -> None:
            for d in (self.to_disk, self.to_memory):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
            if then is not None:
                then()
            # No command pays for the writeback of the one before it (each writes 2 GiB to disk).
            os.sync()

        return setup

    def verify(self, path: Path) -> str:
        return f"{self.chiron} verify {path} --root {self.root}"

    def receive(self, source: Path, to: Path) -> list[str]:
        return [self.chiron, "receive", str(source), "--to", str(to), "--root", self.root]

    def commands(self, app: Path, small: Path, on_disk: Path, vols: Path) -> Commands:
        d, m = self.to_disk / app.name, self.to_memory / app.name
        cold = self.clear(_cold(on_disk))
        parts = " ".join(sorted(str(p) for p in vols.glob("*.chv")))
        return {
            "cp": (["cp", str(app), str(d)], self.clear()),
            "cp+sync": (["sh", "-c", f"cp {app} {d} && sync {d}"], self.clear()),
            "cp+verify": (["sh", "-c", f"cp {app} {d} && {self.verify(d)}"], self.clear()),
            "cp+sync+verify": (["sh", "-c", f"cp {app} {d} && sync {d} && {self.verify(d)}"], self.clear()),
            "receive": (self.receive(app, self.to_disk), self.clear()),
            "cold cp": (["cp", str(on_disk), str(m)], cold),
            "cold cp+verify": (["sh", "-c", f"cp {on_disk} {m} && {self.verify(m)}"], cold),
            "cold receive": (self.receive(on_disk, self.to_memory), cold),
            "cat": (["sh", "-c", f"cat {parts} > {d} && sync {d}"], self.clear()),
            "join": ([self.chiron, "join", str(vols), "-o", str(d), "--root", self.root], self.clear()),
            "receive small": (self.receive(small, self.to_disk), self.clear()),
            # Into memory: what split costs itself, against coreutils split and the sha256 of each part
            # that a guard's manifest needs (chiron also hashes each range, and the whole, first).
            "split": (self.split(app), self.clear()),
            "coreutils split": (["sh", "-c", self.coreutils_split(app)], self.clear()),
        }

    @staticmethod
    def volume_size(app: Path) -> int:
        return app.stat().st_size // 4 + (64 << 20)

    def split(self, app: Path) -> list[str]:
        return [self.chiron, "split", str(app), "--size", str(self.volume_size(app)), "-o", str(self.to_memory)]

    def coreutils_split(self, app: Path) -> str:
        out = self.to_memory
        return f"split -b {self.volume_size(app)} {app} {out}/part. && sha256sum {out}/part.* > {out}/SHA256SUMS"

    def throttled(self, prefix: list[str], on_disk: Path) -> Commands:
        """From the disk at a USB stick's speed into memory. "check, then copy" is the routine receive
        replaces: the medium verified when it is inserted, then copied (read twice: its pages dropped
        in between, as for a medium larger than the page cache or copied later)."""
        m = self.to_memory / on_disk.name
        cold = self.clear(_cold(on_disk))
        drop = f"dd if={on_disk} iflag=nocache count=0 status=none"
        return {
            "usb cp": ([*prefix, "cp", str(on_disk), str(m)], cold),
            "usb cp+verify": ([*prefix, "sh", "-c", f"cp {on_disk} {m} && {self.verify(m)}"], cold),
            "usb verify+cp": ([*prefix, "sh", "-c", f"{self.verify(on_disk)} && {drop} && cp {on_disk} {m}"], cold),
            "usb receive": ([*prefix, *self.receive(on_disk, self.to_memory)], cold),
        }


def _report(record: Record, t: Timed, size: int, volumes: int) -> None:
    gibs = size / (1 << 30)

    def row(key: str, what: str) -> None:
        wall, cpu, _rss = t[key]
        record("media", what, f"{wall:.2f} s (CPU {cpu:.2f} s)")

    def ratio(what: str, a: str, b: str) -> None:
        record("media", what, f"{t[a][0] / t[b][0]:.2f}x")

    row("receive", f"chiron receive, {gibs:.2f} GiB, tmpfs -> disk, fsync'ed")
    row("cp", "cp, tmpfs -> disk (not fsync'ed)")
    row("cp+sync", "cp + sync FILE (durable, like receive)")
    row("cp+verify", "cp + chiron verify")
    row("cp+sync+verify", "cp + sync FILE + chiron verify (durable, like receive)")
    ratio("ratio receive / cp (target <= 1.1)", "receive", "cp")
    ratio("ratio receive / (cp + sync)", "receive", "cp+sync")
    ratio("ratio (cp + verify) / receive (target >= 1.8)", "cp+verify", "receive")
    ratio("ratio (cp + sync + verify) / receive", "cp+sync+verify", "receive")
    row("cold receive", "chiron receive, disk (cold) -> tmpfs")
    row("cold cp", "cp, disk (cold) -> tmpfs")
    row("cold cp+verify", "cp + chiron verify, disk (cold) -> tmpfs")
    ratio("cold: ratio receive / cp (target <= 1.1)", "cold receive", "cold cp")
    ratio("cold: ratio (cp + verify) / receive (target >= 1.8)", "cold cp+verify", "cold receive")
    if "usb receive" in t:
        mbs = USB_BPS // 10**6
        row("usb receive", f"chiron receive, disk read at {mbs} MB/s -> tmpfs")
        row("usb cp", f"cp, disk read at {mbs} MB/s -> tmpfs")
        row("usb cp+verify", "cp + chiron verify of the copy")
        row("usb verify+cp", "chiron verify of the medium, then cp of it (read twice)")
        ratio(f"{mbs} MB/s: ratio receive / cp (target <= 1.1)", "usb receive", "usb cp")
        ratio(f"{mbs} MB/s: ratio (cp + verify) / receive (target >= 1.8)", "usb cp+verify", "usb receive")
        ratio(f"{mbs} MB/s: ratio (verify, then cp) / receive", "usb verify+cp", "usb receive")
    row("split", f"chiron split into {volumes} volumes + manifest (tmpfs -> tmpfs)")
    row("coreutils split", f"coreutils split into {volumes} parts + sha256sum of each")
    ratio("ratio chiron split / (split + sha256sum)", "split", "coreutils split")
    row("join", f"chiron join of {volumes} volumes (tmpfs -> disk, fsync'ed)")
    row("cat", f"cat of the {volumes} volumes + sync FILE")
    ratio("ratio join / (cat + sync)", "join", "cat")
    record("media", f"peak RSS, receive of {gibs:.2f} GiB / of 0.25 GiB", f"{t['receive'][2] / 1024:.0f} MiB / "
           f"{t['receive small'][2] / 1024:.0f} MiB")  # fmt: skip
    record("media", f"peak RSS, join of {gibs:.2f} GiB", f"{t['join'][2] / 1024:.0f} MiB")
