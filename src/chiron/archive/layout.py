"""The appliance file format: a runnable zipapp with a signed payload region in front of it.

    [shebang line][payload members ...][index JSON][footer 64 B][tool zip (pex or shiv)]

Python's zipimport finds the zip from its end, so the interpreter runs the tool zip whatever lies
before it, and a payload of any size never enters the zip (zipimport on 3.11 cannot run a zip whose
central directory lies past 2 GiB; pex would extract zip entries into PEX_ROOT). The footer sits
right before the zip and points at the index; the index lists every payload member with its offset
and length. Nothing in the index or footer is trusted: the verifier checks that they tile the file
exactly and that every member is signed (see verify.py). docs/format.md describes the format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

FORMAT = "chiron-appliance/1"
ZipTime = tuple[int, int, int, int, int, int]
FOOTER_MAGIC = b"CHIRONA1"
FOOTER = struct.Struct("<8sQQQ32s")  # magic, index offset, index length, zip offset, sha256(index)
FOOTER_SIZE = FOOTER.size
CHUNK = 1 << 20
# Members larger than this also get signed per-piece hashes, so verify can hash one large member on
# every core (a single sha256 is sequential); 64 MiB keeps the list short even for 50 GiB.
PIECE = 64 << 20
MAX_INDEX = 64 << 20
MAX_SHEBANG = 256

# Names the format itself gives to regions that are not payload members; they are signed targets.
SHEBANG_TARGET = "_archive/shebang"
TOOL_TARGET = "_archive/tool.zip"
TOOL_MEMBERS_TARGET = "_archive/tool-members.json"
METADATA_PREFIX = "metadata/"


@dataclass(frozen=True)
class Member:
    """A payload member: ``length`` bytes at ``offset`` of the archive."""

    name: str
    offset: int
    length: int


@dataclass(frozen=True)
class Layout:
    """Where everything lies in an appliance, as read from its index and footer."""

    size: int
    shebang: bytes
    members: tuple[Member, ...]
    index_offset: int
    index_length: int
    zip_offset: int
    tool_format: str
    index: dict[str, Any]

    @property
    def footer_offset(self) -> int:
        return self.zip_offset - FOOTER_SIZE

    @property
    def zip_length(self) -> int:
        return self.size - self.zip_offset

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def regions(self) -> dict[str, tuple[int, int]]:
        """Every signed region by target name: payload members plus the shebang and the tool zip."""
        out = {m.name: (m.offset, m.length) for m in self.members}
        out[SHEBANG_TARGET] = (0, len(self.shebang))
        out[TOOL_TARGET] = (self.zip_offset, self.zip_length)
        return out


# ---------------------------------------------------------------- reading
