"""The TUF client over an archive: python-tuf's Updater fed from the archive's own members, offline."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface


class ArchiveFetcher(FetcherInterface):
    """Serves ``metadata/`` members of an appliance to python-tuf's Updater, with no network.

    A missing member is a 404, which is what ends the Updater's root-rotation loop.
    """

    BASE = "chiron-archive:/metadata/"

    def __init__(self, path: Path, regions: Mapping[str, tuple[int, int]]) -> None:
        self._path = path
        self._regions = regions

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.BASE):
            raise DownloadHTTPError(f"{url}: not in this archive", 404)
        name = "metadata/" + url[len(self.BASE) :]
        region = self._regions.get(name)
        if region is None:
            raise DownloadHTTPError(f"{name}: not in this archive", 404)
        return self._chunks(*region)

    def _chunks(self, offset: int, length: int) -> Iterator[bytes]:
        with self._path.open("rb") as f:
            fd = f.fileno()
            end = offset + length
            while offset < end:
                chunk = os.pread(fd, min(1 << 16, end - offset), offset)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
