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

import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

from chiron.errors import FormatError

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
MAX_MEMBERS = 1_000_000  # far above any real appliance (thousands); bounds what an index can make us hold
MAX_SHEBANG = 256

# Names the format itself gives to regions that are not payload members; they are signed targets.
SHEBANG_TARGET = "_archive/shebang"
TOOL_TARGET = "_archive/tool.zip"
# The index and footer, as one extent of a delta (not a target: the reader checks it).
INDEX_EXTENT = "_archive/index"
# The one payload member the format itself defines under _archive/.
TOOL_MEMBERS_TARGET = "_archive/tool-members.json"
FORMAT_PREFIX = "_archive/"
METADATA_PREFIX = "metadata/"
TUF_ROLE_FILES = ("timestamp.json", "snapshot.json", "targets.json")

# "N.root.json" with N a version written in ASCII digits, no leading zero: str.isdigit() would also
# accept superscripts and other scripts' digits, and int() would then read them.
_ROOT_FILE = re.compile(r"([1-9][0-9]{0,17})\.root\.json")

RegionKind = Literal["shebang", "member", "metadata", "tool"]


def root_version(filename: str) -> int | None:
    """N for a file named ``N.root.json`` (a root metadata version), else None."""
    match = _ROOT_FILE.fullmatch(filename)
    return int(match.group(1)) if match else None


def root_member_version(name: str) -> int | None:
    """N for the archive member ``metadata/N.root.json``, else None."""
    return root_version(name[len(METADATA_PREFIX) :]) if name.startswith(METADATA_PREFIX) else None


def root_member(version: int) -> str:
    return f"{METADATA_PREFIX}{version}.root.json"


def appliance_suffix(tool_format: str) -> str:
    """The file suffix of an appliance whose tool zip is in ``tool_format``: ``.pyz`` for shiv."""
    return ".pyz" if tool_format == "shiv" else ".pex"


def is_metadata_file(name: str) -> bool:
    """Whether ``name`` is a member of the archive's TUF repository (root chain or a role file)."""
    return root_member_version(name) is not None or name in {METADATA_PREFIX + f for f in TUF_ROLE_FILES}


def reserved_name_problem(name: str) -> str | None:
    """Why a payload member may not be called ``name`` (it is the format's own), or None.

    ``_archive/`` names the regions the format signs itself (shebang, tool zip, index): a member of
    that name could pose as one of them. ``metadata/`` holds the TUF repository and nothing else.
    """
    if name.startswith(FORMAT_PREFIX) and name != TOOL_MEMBERS_TARGET:
        return f"the name is reserved for the format's own regions ({FORMAT_PREFIX}...)"
    if name.startswith(METADATA_PREFIX) and not is_metadata_file(name):
        return f"only N.root.json and {', '.join(TUF_ROLE_FILES)} may be under {METADATA_PREFIX}"
    return None


@dataclass(frozen=True)
class Region:
    """A region of the file and what it is: the shebang, a payload member, a TUF metadata member (not
    a target: TUF checks it), or the tool zip. Verify matches each with a target of the same kind."""

    name: str
    offset: int
    length: int
    kind: RegionKind


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

    def spans(self) -> tuple[Region, ...]:
        """Every region in file order (the index and footer aside), each with its kind."""
        out = [Region(SHEBANG_TARGET, 0, len(self.shebang), "shebang")]
        out += [
            Region(m.name, m.offset, m.length, "metadata" if is_metadata_file(m.name) else "member")
            for m in self.members
        ]
        out.append(Region(TOOL_TARGET, self.zip_offset, self.zip_length, "tool"))
        return tuple(out)

    def regions(self) -> dict[str, tuple[int, int]]:
        """Every region by name: payload and metadata members plus the shebang and the tool zip.

        A name that appears twice (a payload member named like a format region, or a duplicate) is
        refused: a dictionary would silently keep one of them, and the other would go unchecked.
        The reader refuses such archives when it opens them, so this never fires on a read layout.
        """
        out: dict[str, tuple[int, int]] = {}
        for r in self.spans():
            if r.name in out:
                raise FormatError(f"member {r.name}: appears twice or takes a name the format reserves")
            out[r.name] = (r.offset, r.length)
        return out


# ---------------------------------------------------------------- reading
