"""python-tuf's fetcher over an archive: the Updater reads the ``metadata/`` members of an appliance,
with no network. Kept apart from client.py so that importing the client does not import python-tuf."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

from chiron.archive.layout import METADATA_PREFIX, is_metadata_file
from chiron.archive.reader import MemberSource
from chiron.errors import FormatError


class ArchiveFetcher(FetcherInterface):
    """Serves ``metadata/`` members of an appliance (or of what a volume carries) to python-tuf's Updater.

    A missing member is a 404, which is what ends the Updater's root-rotation loop. Each member is
    taken whole through ``reader.read`` under its role's bound (``limit``), so python-tuf sees the very
    bytes chiron checked: a volume's reader serves them from the one copy it read (a file rewritten
    during the run cannot slip other metadata in between chiron's checks and python-tuf's).
    """

    BASE = "chiron-archive:/metadata/"

    def __init__(self, reader: MemberSource, limit: Callable[[str], int]) -> None:
        self._reader = reader
        self._limit = limit

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = METADATA_PREFIX + url.removeprefix(self.BASE)
        if not url.startswith(self.BASE) or not is_metadata_file(name) or not self._reader.has(name):
            raise DownloadHTTPError(f"{name}: not in this archive", 404)
        try:
            data = self._reader.read(name, self._limit(name))
        except FormatError as exc:  # over its role's bound: python-tuf reports it like a failed download
            raise DownloadHTTPError(exc.message, 413) from None
        return iter((data,))
