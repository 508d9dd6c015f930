"""The TUF client over an archive: python-tuf's Updater fed from the archive's own members, offline."""

from __future__ import annotations

import os
from collections.abc import Iterator

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

from chiron.archive.reader import ArchiveReader


class ArchiveFetcher(FetcherInterface):
    """Serves ``metadata/`` members of an appliance to python-tuf's Updater, with no network.

    A missing member is a 404, which is what ends the Updater's root-rotation loop.
    """

    BASE = "chiron-archive:/metadata/"

    def __init__(self, reader: ArchiveReader) -> None:
        self._reader = reader

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.BASE):
            raise DownloadHTTPError(f"{url}: not in this archive", 404)
        name = "metadata/" + url[len(self.BASE) :]
        if not self._reader.has(name):
            raise DownloadHTTPError(f"{name}: not in this archive", 404)
        return self._chunks(*self._reader.region(name))

    def _chunks(self, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            chunk = os.pread(self._reader.fd, min(1 << 16, end - offset), offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk
