"""Download an appliance, a delta or a signature from a server, resumably; nothing is trusted here.

``chiron download URL -o FILE`` and ``chiron upgrade URL`` use it. The download goes through the
artifact cache's resumable path: the partial file is named by the sha256 the server announces as
its strong ETag (``chiron serve`` does), so an interrupted download continues with an HTTP Range
request the next time; a server without such an ETag gets a whole download each time. What arrives
is verified afterwards exactly like a local file (``verify``, or ``upgrade`` against the host's
trusted metadata): the server and the network are never trusted.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from chiron.core import progress as _progress
from chiron.errors import ArtifactError, UsageError
from chiron.sources import http as _http
from chiron.sources.cache import PARTIAL, ArtifactCache

SHA256 = re.compile(r"^[0-9a-f]{64}$")
WORK = ".chiron-download"  # beside the output: partial downloads, kept so the next run resumes them


@dataclass
class DownloadResult:
    url: str
    output: Path
    size: int
    sha256: str
    resumed: bool
    bytes_downloaded: int
    signature: Path | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.download/1",
            "url": self.url,
            "output": str(self.output),
            "size": self.size,
            "sha256": self.sha256,
            "resumed": self.resumed,
            "bytes_downloaded": self.bytes_downloaded,
            "signature": str(self.signature) if self.signature else None,
            "seconds": round(self.seconds, 3),
        }


def strong_sha256(etag: str | None) -> str:
    """The sha256 a strong ETag names (``"HEX"``), or "" (weak, absent or another kind of tag)."""
    tag = (etag or "").strip()
    if tag.startswith("W/"):
        return ""
    tag = tag.strip('"').lower()
    return tag if SHA256.match(tag) else ""


def download(
    url: str,
    out: Path,
    client: _http.Client | None = None,
    *,
    signature: bool = True,
    show_progress: bool = False,
) -> DownloadResult:
    """Download ``url`` to ``out`` (atomically; resumed if an earlier run was interrupted), and its
    detached signature ``URL.sig`` beside it when the server has one."""
    started = time.monotonic()
    if out.is_dir():
        raise UsageError(f"-o {out}: is a directory; give the file to write")
    url, client = _http.with_url_credentials(url, client)
    final, headers = _http.head(url, "download", client=client)
    sha = strong_sha256(headers.get("etag"))
    total = int(headers.get("content-length") or 0)
    work = out.parent / WORK
    cache = ArtifactCache(work, client)
    name = out.name
    with _progress.bar(total, f"downloading {name}", enabled=show_progress and total > 0) as bar:
        path, got, size = cache.fetch(final, sha, name, progress=bar.advance)
    os.replace(path, out)
    with out.open("rb") as f:
        if f.read(2) == b"#!":  # an appliance runs as a program, like the file it was copied from
            os.chmod(out, 0o755)  # noqa: S103
    _tidy(work)
    sig = _signature(final, out, client) if signature and not final.endswith(".sig") else None
    stats = cache.stats
    return DownloadResult(
        url=final,
        output=out,
        size=size,
        sha256=got,
        resumed=bool(stats.resumed),
        bytes_downloaded=stats.bytes_downloaded,
        signature=sig,
        seconds=time.monotonic() - started,
    )


def _signature(url: str, out: Path, client: _http.Client) -> Path | None:
    """``URL.sig`` beside the download, if the server has it (a 404 is not an error)."""
    dest = out.with_name(out.name + ".sig")
    try:
        src, _resumed = _http.open_url(url + ".sig", "signature", client=client)
    except ArtifactError as exc:
        if "HTTP 404" in exc.message:
            return None
        raise
    with src:
        data = src.read(1 << 20)
    from chiron.core.fs import write_atomic

    write_atomic(dest, data)
    return dest


def _tidy(work: Path) -> None:
    """Remove the cache directories a finished download leaves empty (partials stay for resuming)."""
    for d in sorted(work.glob("sha256/*"), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    for d in (work / "sha256", work):
        with contextlib.suppress(OSError):
            d.rmdir()


def for_upgrade(url: str, prefix: Path, state_dir: Path | None, client: _http.Client | None = None) -> Path:
    """Fetch what ``chiron upgrade URL`` installs into ``STATE/downloads``; the local file's path.

    A URL ending in ``/`` is a chiron server: the host sends its inventory and gets the delta that
    fits it, made on demand. Any other URL is the appliance (or delta) itself.
    """
    from chiron.engines.host import Paths
    from chiron.engines.host import inventory as host_inventory

    paths = Paths.make(prefix, state_dir)
    downloads = paths.state / "downloads"
    downloads.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in downloads.iterdir():  # an earlier run's finished file: the release kept its own copy
        if old.is_file() and not old.name.startswith(PARTIAL):
            old.unlink()
    url, client = _http.with_url_credentials(url, client)
    if url.endswith("/"):
        inventory = host_inventory(prefix, state_dir)
        _status, _headers, answer = _http.request(
            urljoin(url, "v1/deltas"), "delta", method="POST", body=inventory, client=client
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("url"), str):
            raise ArtifactError(f"delta: {url} answered without a delta URL")
        target = urljoin(url, answer["url"])
        name = f"{answer.get('name') or 'appliance'}-{answer.get('metadata_version') or 'new'}.delta"
    else:
        target = url
        name = Path(urlsplit(url).path).name or "appliance.pex"
        if name in ("latest", "current"):
            name = f"{name}.pex"
    return download(target, downloads / name, client, signature=False).output
