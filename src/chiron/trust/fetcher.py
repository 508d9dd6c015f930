"""python-tuf's fetcher over an archive: the Updater reads the ``metadata/`` members of an appliance,
with no network. Kept apart from client.py so that importing the client does not import python-tuf."""

from __future__ import annotations

import os
from collections.abc import Iterator

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

from chiron.archive.layout import METADATA_PREFIX, is_metadata_file
from chiron.archive.reader import ArchiveReader

_CHUNK = 1 << 16


class ArchiveFetcher(FetcherInterface):
    """Serves ``metadata/`` members of an appliance to python-tuf's Updater, in chunks.

    A missing member is a 404, which is what ends the Updater's root-rotation loop. python-tuf
    stops reading once a file passes its role's length limit.
    """

    BASE = "chiron-archive:/metadata/"

    def __init__(self, reader: ArchiveReader) -> None:
        self._reader = reader

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = METADATA_PREFIX + url.removeprefix(self.BASE)
        if not url.startswith(self.BASE) or not is_metadata_file(name) or not self._reader.has(name):
            raise DownloadHTTPError(f"{name}: not in this archive", 404)
        return self._chunks(*self._reader.region(name))

    def _chunks(self, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            chunk = os.pread(self._reader.fd, min(_CHUNK, end - offset), offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk
