"""Fetch pinned artifacts into a content-addressed cache, re-checking every hash.

The cache is keyed by sha256 (``CACHE/sha256/ab/abcd...``), so a rebuild finds what it already has
without any request, and a file is only ever placed in the cache after its bytes were hashed. A
download of a pinned artifact goes to ``CACHE/.partial-<sha256>``; if it is interrupted, the next
fetch continues it with an HTTP Range request (and starts over when the server ignores Range).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from chiron.core.fs import sha256_file
from chiron.errors import ArtifactError
from chiron.sources.http import Client, open_url

CHUNK = 1 << 20
PARTIAL = ".partial-"  # CACHE/.partial-<sha256>: a download in progress (or interrupted)


def default_cache_dir() -> Path:
    """CHIRON_CACHE_DIR, else $XDG_CACHE_HOME/chiron, else ~/.cache/chiron."""
    if os.environ.get("CHIRON_CACHE_DIR"):
        return Path(os.environ["CHIRON_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chiron"


@dataclass
class FetchStats:
    downloaded: int = 0
    reused: int = 0
    bytes_downloaded: int = 0
    resumed: int = 0  # downloads continued from an interrupted run's partial file


class Pinned(Protocol):
    """What a lock pins: where an artifact comes from, its file name and sha256 ("" if not yet known)."""

    @property
    def url(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def filename(self) -> str: ...


@dataclass
class Fetched:
    """Every artifact of a lock, in the cache: path and measured (sha256, size) by file name."""

    paths: dict[str, Path] = field(default_factory=dict)
    measured: dict[str, tuple[str, int]] = field(default_factory=dict)


class ArtifactCache:
    """Content-addressed store of fetched artifacts."""

    def __init__(self, root: Path, client: Client | None = None) -> None:
        self.root = root
        self.stats = FetchStats()
        self.client = client  # credentials and CA for a chiron server (chiron pull); None for an index

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def fetch(
        self, url: str, sha256: str, what: str, progress: Callable[[int], None] | None = None
    ) -> tuple[Path, str, int]:
        """Return (path, sha256, size) of the artifact, downloading it only if the cache lacks it.

        An empty ``sha256`` means the lock has no hash yet: the measured hash is returned and recorded.
        """
        if sha256:
            cached = self.path_for(sha256)
            if cached.is_file():
                # Re-hashed on reuse: what comes out of the cache is parsed (SBOM, policy) and signed.
                got = sha256_file(cached)
                if got != sha256:
                    raise ArtifactError(
                        f"{what}: cached copy {cached} has sha256 {got}, the lock pins {sha256}",
                        hint="the cache was modified; delete that file and run again",
                    )
                self.stats.reused += 1
                return cached, sha256, cached.stat().st_size
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp, named = self._partial(sha256)
        if fd is None:  # another process finished this download meanwhile: take its copy
            return self.fetch(url, sha256, what, progress)
        try:
            # The descriptor (and its lock) stays open until the file is renamed into the cache.
            with os.fdopen(fd, "r+b") as out:
                h, have = hashlib.sha256(), 0
                while chunk := out.read(CHUNK):  # what an earlier run left: continued with HTTP Range
                    h.update(chunk)
                    have += len(chunk)
                got, size, resumed = _receive(out, url, what, h, have, progress, self.client)
                if resumed and sha256 and got != sha256:
                    # The joined file is wrong (the partial did not match upstream): once more, whole.
                    out.seek(0)
                    out.truncate()
                    got, size, resumed = _receive(out, url, what, hashlib.sha256(), 0, progress, self.client)
                    have = 0
                self.stats.resumed += int(resumed)
                if sha256 and got != sha256:
                    tmp.unlink(missing_ok=True)
                    raise ArtifactError(
                        f"{what}: sha256 mismatch for {url}: the lock pins {sha256}, the download is {got}",
                        hint="the index served different bytes than were locked; re-lock only if you trust the change",
                    )
                dest = self.path_for(got)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
        except BaseException:
            if not named:
                tmp.unlink(missing_ok=True)  # unnamed: cannot be resumed
            raise
        self.stats.downloaded += 1
        self.stats.bytes_downloaded += size - (have if resumed else 0)
        return dest, got, size

    def fetch_all(self, artifacts: Iterable[Pinned], progress: Callable[[int], None] | None = None) -> Fetched:
        """Fetch every artifact the cache lacks (each re-hashed); the one loop build, refresh and lock share."""
        out = Fetched()
        for art in artifacts:
            path, sha, size = self.fetch(art.url, art.sha256, art.filename, progress=progress)
            out.paths[art.filename] = path
            out.measured[art.filename] = (sha, size)
        return out

    def _partial(self, sha256: str) -> tuple[int | None, Path, bool]:
        """An open, locked partial file: named by the pinned hash (resumable) when it is free, else a
        private temporary one. (None, ...) when another process completed the named one meanwhile."""
        if sha256:
            tmp = self.root / f"{PARTIAL}{sha256}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # another process is downloading it: do our own, privately
            else:
                try:
                    current = os.stat(tmp).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if current:
                    return fd, tmp, True
                os.close(fd)  # renamed into the cache by the process that held it
                if self.path_for(sha256).is_file():
                    return None, tmp, True
        fd, name = tempfile.mkstemp(prefix=PARTIAL, dir=self.root)
        return fd, Path(name), False


def _receive(
    out: IO[bytes],
    url: str,
    what: str,
    h: Any,
    have: int,
    progress: Callable[[int], None] | None,
    client: Client | None = None,
) -> tuple[str, int, bool]:
    """Download into ``out`` after its first ``have`` bytes (hashed into ``h``): (sha256, size, resumed)."""
    src, resumed = open_url(url, what, have, client=client)
    if have and not resumed:  # the server sent the whole file (it ignored the Range): start over
        out.seek(0)
        out.truncate()
        h, have = hashlib.sha256(), 0
    size = have
    with src:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest(), size, resumed
