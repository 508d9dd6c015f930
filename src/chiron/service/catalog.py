"""The appliances a service serves: each one verified before any byte of it is served.

Where they come from: a mirror store's recorded versions, a directory of appliance files, or the
appliances an enclave host's releases kept. Each is verified with ``engines.verify.verified`` against
the service's trust anchor and then held open (the verified handle keeps its descriptor), together
with what the index needs: every wheel's offset, signed sha256 and PEP 658 core metadata.

How a change on disk is caught (ADR 0010): the verified file's identity and times
(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) are recorded after verification. Every request
that serves bytes compares them with ``fstat`` of the held descriptor (an in-place write changes
ctime, which no unprivileged user can set back) and with ``stat`` of the path (a replaced or removed
file). Any difference, or expired metadata, refuses the request and re-verifies the file in the
background; only a file that verifies again is served again. Bytes then go out with sendfile from
the held inode at the signed offsets: re-hashing every download would cost a full read per request
and could only fail after the bytes had left.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from chiron.engines.report import Trust
from chiron.engines.verify import VerifiedAppliance, verified
from chiron.errors import ChironError, UsageError
from chiron.service.files import Dist, FileSig, read_metadata
from chiron.service.settings import Settings

WHEELS = "wheels/"
SUFFIXES = (".pex", ".pyz")
MAX_SIGNATURE = 64 << 10


@dataclass
class Entry:
    """A verified appliance, held open."""

    path: Path
    source: str  # store | appliances | releases: which X-Accel location serves it
    rel: str  # its path under that source
    name: str
    version: str
    metadata_version: int
    created: str
    expires: datetime
    size: int
    sha256: str
    fsig: FileSig
    dists: dict[str, Dist]
    signature: bytes | None
    current: bool
    handle: VerifiedAppliance
    stack: contextlib.ExitStack
    trust: Trust | None = None  # what verification established (roles, root): the pages show it
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    projects: dict[str, list[Dist]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in self.dists.values():
            self.projects.setdefault(d.project, []).append(d)

    @property
    def filename(self) -> str:
        return self.path.name if self.source != "releases" else f"{self.path.parent.name}.pex"

    def changed(self) -> str | None:
        """Why this appliance must not be served now (changed, replaced, removed, expired), or None.

        Told to clients, so it names the file as they know it (its name), never where it lies on the
        server: the rescan this starts logs that."""
        if datetime.now(UTC) >= self.expires:
            return f"{self.filename}: its metadata expired on {self.expires:%Y-%m-%dT%H:%M:%SZ}"
        with self.lock:
            if self.closed:
                return f"{self.filename}: no longer served"
            if FileSig.of(os.fstat(self.handle.reader.fd)) != self.fsig:
                return f"{self.filename}: changed on disk after it was verified"
        try:
            st = os.stat(self.path)
        except OSError:
            return f"{self.filename}: removed after it was verified"
        if (st.st_dev, st.st_ino) != (self.fsig.dev, self.fsig.ino):
            return f"{self.filename}: replaced after it was verified"
        return None

    def dup(self) -> int | None:
        """A new descriptor of the verified inode for one response, with its own file offset (None once
        the entry is closed): reopened through /proc where there is one, since a dup shares the offset."""
        with self.lock:
            if self.closed:
                return None
            fd = self.handle.reader.fd
            try:
                return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return os.dup(fd)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.stack.close()


@dataclass(frozen=True)
class Snapshot:
    """What is served at one moment; replaced whole when a scan changes anything."""

    entries: tuple[Entry, ...] = ()
    default_name: str | None = None
    failed: tuple[tuple[str, str], ...] = ()  # (path, first problem) of files that did not verify

    def names(self) -> list[str]:
        return sorted({e.name for e in self.entries})

    def failures(self, *, admin: bool) -> list[tuple[str, str]]:
        """The files that did not verify, as a caller may see them: why (with the server's paths) for
        an admin; for anyone else, the file's name only (the server log says why)."""
        if admin:
            return list(self.failed)
        return [
            (Path(p).name, f"{Path(p).name}: did not verify; it is not served (an admin sees why)")
            for p, _ in self.failed
        ]

    def of(self, name: str | None = None) -> list[Entry]:
        name = name or self.default_name
        return sorted((e for e in self.entries if e.name == name), key=lambda e: (e.metadata_version, e.filename))

    def latest(self, name: str | None = None) -> Entry | None:
        versions = self.of(name)
        current = [e for e in versions if e.current]
        return current[-1] if current else (versions[-1] if versions else None)

    def find(self, ref: str, name: str | None = None) -> Entry | None:
        """An appliance by ``latest``, its metadata version, its version, or its file name."""
        if ref in ("latest", "current"):
            return self.latest(name)
        versions = self.of(name)
        if ref.isdigit():
            matches = [e for e in versions if e.metadata_version == int(ref)]
        else:
            matches = [e for e in versions if e.version == ref] or [e for e in self.entries if e.filename == ref]
        return matches[-1] if matches else None

    def dist(self, sha256: str, filename: str) -> tuple[Entry, Dist] | None:
        for e in sorted(self.entries, key=lambda e: -e.metadata_version):
            d = e.dists.get(filename)
            if d is not None and d.sha256 == sha256:
                return e, d
        return None


class Catalog:
    """Finds, verifies and holds the appliances of the configured sources."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root_file, self.root_sha256 = trust_anchor(settings)
        self.snapshot = Snapshot()
        self.ready = False
        self._entries: dict[str, Entry] = {}
        self._failed: dict[str, tuple[FileSig, str]] = {}
        self._meta: dict[str, tuple[bytes | None, str | None, str | None]] = {}  # wheel sha256 -> metadata
        self._scan_lock = threading.Lock()
        self.wake = threading.Event()
        self.error: str | None = None  # why the last scan could not read the sources

    def candidates(self) -> list[tuple[Path, str, str, bool]]:
        """(path, source, path under the source, current) of every appliance file to serve."""
        s = self.settings
        found: list[tuple[Path, str, str, bool]] = []
        if s.store is not None:
            from chiron.engines.mirror import Store

            state = Store(s.store.absolute()).state()
            for v in state.versions if state is not None else []:
                path = s.store.absolute() / v.file
                if not v.pruned and path.is_file():
                    found.append((path, "store", v.file, False))
        if s.appliances is not None:
            for p in sorted(s.appliances.absolute().iterdir()):
                if p.suffix in SUFFIXES and p.is_file():
                    found.append((p, "appliances", p.name, False))
        if s.prefix is not None:
            prefix = s.prefix.absolute()
            current = os.readlink(prefix / "current") if (prefix / "current").is_symlink() else ""
            for p in sorted((prefix / "releases").glob("*/appliance")):
                found.append((p, "releases", f"{p.parent.name}/appliance", current == f"releases/{p.parent.name}"))
        return found

    def scan(self) -> bool:
        """Look at every source once: verify new or changed files, drop gone ones; whether anything changed."""
        with self._scan_lock:
            try:
                found = self.candidates()
            except (ChironError, OSError) as exc:
                self.error = exc.diagnostics() if isinstance(exc, ChironError) else str(exc)
                raise
            self.error = None
            changed = False
            seen: set[str] = set()
            for path, source, rel, current in found:
                key = str(path)
                seen.add(key)
                try:
                    sig = FileSig.of(os.stat(path))
                except OSError:
                    continue
                entry = self._entries.get(key)
                if entry is not None and entry.changed() is None and entry.fsig == sig:
                    if entry.current != current:
                        entry.current, changed = current, True
                    continue
                if entry is None and key in self._failed and self._failed[key][0] == sig:
                    continue  # the same bad file: not verified again until it changes
                if entry is not None:
                    self._retire(key)
                changed = True
                self._load(path, source, rel, current, sig)
            for key in set(self._entries) - seen:
                self._retire(key)
                changed = True
            for key in set(self._failed) - seen:
                del self._failed[key]
            self._publish()
            self.ready = True
            return changed

    def _retire(self, key: str) -> None:
        entry = self._entries.pop(key)
        entry.close()

    def _publish(self) -> None:
        entries = tuple(self._entries.values())
        name = self.settings.name
        if name is None and entries:
            store_or_current = [e for e in entries if e.current] or entries
            name = max(store_or_current, key=lambda e: e.metadata_version).name
        failed = tuple(sorted((k, v[1]) for k, v in self._failed.items()))
        self.snapshot = Snapshot(entries, name, failed)

    def _load(self, path: Path, source: str, rel: str, current: bool, sig: FileSig) -> None:
        stack = contextlib.ExitStack()
        try:
            report = stack.enter_context(verified(path, root_file=self.root_file, root_sha256=self.root_sha256))
            if not report.ok:
                raise _Failed(report.problems[0] if report.problems else "verification failed")
            handle = report.verified
            fd = handle.reader.fd
            fsig = FileSig.of(os.fstat(fd))
            if fsig != sig:
                raise _Failed("changed while it was verified")
            entry = Entry(
                path=path,
                source=source,
                rel=rel,
                name=str(report.name),
                version=str(report.version),
                metadata_version=int(report.roles["targets"]["version"]),
                created=str(report.manifest.get("created", "")),
                expires=min(
                    datetime.strptime(r["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                    for r in report.roles.values()
                ),
                size=report.size,
                sha256=_whole_sha256(fd, report.size),
                fsig=fsig,
                dists=self._dists(handle),
                signature=_signature(path),
                current=current,
                handle=handle,
                stack=stack,
                trust=Trust.of(report),
            )
            if FileSig.of(os.fstat(fd)) != fsig:
                raise _Failed("changed while it was read after verification")
        except (_Failed, ChironError, OSError) as exc:
            stack.close()
            text = exc.diagnostics() if isinstance(exc, ChironError) else str(exc)
            self._failed[str(path)] = (sig, f"{path}: {text}")
            return
        except BaseException:
            stack.close()
            raise
        self._failed.pop(str(path), None)
        self._entries[str(path)] = entry

    def _dists(self, handle: VerifiedAppliance) -> dict[str, Dist]:
        out: dict[str, Dist] = {}
        fd = handle.reader.fd
        for member in handle.layout.members:
            if not member.name.startswith(WHEELS) or member.name.count("/") != 1:
                continue
            filename = member.name.removeprefix(WHEELS)
            try:
                if filename.endswith(".whl"):
                    project, version, _build, _tags = parse_wheel_filename(filename)
                else:
                    project, version = parse_sdist_filename(filename)
            except (InvalidWheelFilename, InvalidSdistFilename):
                continue
            target = handle.target(member.name)
            if target.sha256 not in self._meta:
                self._meta[target.sha256] = read_metadata(fd, member.offset, member.length, filename)
            meta, meta_sha, requires = self._meta[target.sha256]
            out[filename] = Dist(
                filename=filename,
                project=canonicalize_name(project),
                version=str(version),
                member=member.name,
                offset=member.offset,
                size=member.length,
                sha256=target.sha256,
                requires_python=requires,
                metadata=meta,
                metadata_sha256=meta_sha,
            )
        return out

    def close(self) -> None:
        with self._scan_lock:
            for key in list(self._entries):
                self._retire(key)
            self.snapshot = Snapshot()


class _Failed(Exception):
    pass


def trust_anchor(settings: Settings) -> tuple[Path | None, str | None]:
    """The root every served appliance is verified against: --root / --root-sha256, else the store's
    first root, else the host's trusted root; a directory of appliances alone needs one given."""
    if settings.root_file is not None or settings.root_sha256 is not None:
        return settings.root_file, settings.root_sha256
    if settings.store is not None and (settings.store / "tuf" / "root" / "1.root.json").is_file():
        return settings.store / "tuf" / "root" / "1.root.json", None
    if settings.prefix is not None:
        state = settings.state_dir or settings.prefix / "state"
        if (state / "metadata" / "root.json").is_file():
            return state / "metadata" / "root.json", None
    raise UsageError(
        "no trust anchor for what is served: give --root FILE or --root-sha256 HEX",
        hint="every appliance is verified before any of its bytes are served; a store or a host prefix has its own",
    )


def _whole_sha256(fd: int, size: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        n = os.preadv(fd, [view[: min(len(buf), size - pos)]], pos)
        if n <= 0:
            raise _Failed("ends early")
        h.update(view[:n])
        pos += n
    return h.hexdigest()


def _signature(path: Path) -> bytes | None:
    """The detached signature beside the appliance (public, checked by the operator with ssh-keygen)."""
    sig = path.with_name(path.name + ".sig")
    try:
        if sig.is_file() and sig.stat().st_size <= MAX_SIGNATURE:
            return sig.read_bytes()
    except OSError:
        pass
    return None
