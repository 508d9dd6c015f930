"""HTTP conditional and range requests (RFC 9110 sections 13 and 14), decided without I/O.

One byte range per request is served (what resuming clients such as ``curl -C -``, pip, uv and
chiron ask for); a multi-range request is answered with the whole representation, which RFC 9110
allows. ETags are strong: the sha256 of the bytes, quoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as in a Content-Range header."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """The range lies wholly outside the representation (answered with 416)."""


def etag(sha256: str) -> str:
    return f'"{sha256}"'


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range a ``Range`` header asks for; None for the whole representation (no header, another
    unit, several ranges, or a malformed header, all of which may be ignored); Unsatisfiable when
    it starts at or after the end."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored, as RFC 9110 says
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(end, size - 1))


def if_range_holds(header: str | None, tag: str) -> bool:
    """Whether a Range may be honoured: no If-Range, or one naming the current strong ETag. A date
    or another tag means the client's partial copy may be of other bytes: send them all."""
    if header is None:
        return True
    return header.strip() == tag


def none_match(header: str | None, tag: str) -> bool:
    """If-None-Match matches (answer 304): ``*`` or a listed tag (weak comparison, RFC 9110 13.1.2)."""
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or tag in (t.removeprefix("W/") for t in tags)
