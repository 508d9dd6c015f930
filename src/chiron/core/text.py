"""The text forms chiron writes and checks: canonical JSON and safe member names."""

from __future__ import annotations

import json
import re
from typing import Any

_C0_DEL = re.compile("[\x00-\x1f\x7f]")  # a regex: verify checks thousands of tool zip names


def check_member_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe relative POSIX path (no traversal, no oddities)."""
    if not name or len(name) > 1024:
        raise ValueError(f"member name '{name[:80]}' is empty or too long")
    if name.startswith("/") or "\\" in name or _C0_DEL.search(name):
        raise ValueError(f"member name '{name}' is absolute or has a backslash or control character")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"member name '{name}' has an empty, '.' or '..' path segment")


def canonical_json(obj: Any) -> bytes:
    """The one serialisation chiron writes for its own JSON, so bytes can be compared exactly."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# Characters that change what a terminal shows rather than show themselves: C0 and C1 controls,
# DEL (ESC is C0), and the bidirectional controls (LRM/RLM, ALM, embeddings, overrides, isolates).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: controls and bidi controls as ``\\xNN`` / ``\\uNNNN``.

    Every string that an archive, a state file or any other input controls goes through this
    before it reaches a terminal, so that no escape sequence can rewrite what the operator reads.
    """
    return _UNPRINTABLE.sub(_escape, text)
