"""The text forms chiron writes and checks: canonical JSON and safe member names."""

from __future__ import annotations

import json
from typing import Any


def check_member_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a safe relative POSIX path (no traversal, no oddities)."""
    if not name or len(name) > 1024:
        raise ValueError(f"member name '{name[:80]}' is empty or too long")
    if name.startswith("/") or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"member name '{name}' is absolute or has a backslash or control character")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"member name '{name}' has an empty, '.' or '..' path segment")


def canonical_json(obj: Any) -> bytes:
    """The one serialisation chiron writes for its own JSON, so bytes can be compared exactly."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
