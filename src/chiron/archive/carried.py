"""What every volume of an appliance carries (the shebang, ``appliance.json``, the TUF metadata, the
index), read from the appliance itself: split writes it into each volume, and receive reads it
once from a whole appliance so that TUF, the plan and the staging key all see the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from chiron.archive.layout import INDEX_EXTENT, SHEBANG_TARGET, Layout
from chiron.archive.reader import ArchiveReader, pread_exact
from chiron.archive.volume import MAX_CARRIED_MEMBER, carried_names
from chiron.core.text import plain
from chiron.errors import FormatError


def carried_from(reader: ArchiveReader) -> list[tuple[str, bytes]]:
    """The members a volume of this appliance carries, read from the appliance itself (unchecked):
    the same bytes, in the same order, as a volume's carried section."""
    layout = reader.layout
    out: list[tuple[str, bytes]] = []
    for name, length in carried_names(layout):
        if name == SHEBANG_TARGET:
            out.append((name, layout.shebang))
        elif name == INDEX_EXTENT:
            out.append((name, pread_exact(reader.fd, length, layout.index_offset)))
        else:
            out.append((name, reader.read(name, MAX_CARRIED_MEMBER)))
    return out


class Carried:
    """What a volume of this appliance would carry, read once from the appliance itself: a MemberSource
    over those bytes, so the TUF client, the plan and the staging key all see one copy, whatever
    happens to the file meanwhile."""

    def __init__(self, reader: ArchiveReader) -> None:
        self._reader = reader
        self.members = carried_from(reader)
        self._bytes = dict(self.members)

    @property
    def path(self) -> Path:
        return self._reader.path

    @property
    def fd(self) -> int:
        return self._reader.fd

    @property
    def layout(self) -> Layout:
        return self._reader.layout

    def has(self, name: str) -> bool:
        return name in self._bytes

    def region(self, name: str) -> tuple[int, int]:
        return self._reader.region(name)

    def read(self, name: str, limit: int | None = None) -> bytes:
        data = self._bytes.get(name)
        if data is None:
            raise FormatError(f"member {plain(name)}: not carried")
        if limit is not None and len(data) > limit:
            raise FormatError(f"member {plain(name)}: {len(data)} bytes, more than the {limit} allowed for it")
        return data

    def sha256(self) -> str:
        """Equal to any of its volumes' ``carried_sha256``, so the appliance and its volumes share a staging."""
        return hashlib.sha256(b"".join(data for _name, data in self.members)).hexdigest()
