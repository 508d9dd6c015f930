"""Every path an MCP client names must lie under a root the operator allowed (``--allow-path``,
``[mcp] allow_paths``), both as written and once every symbolic link in it is resolved: a link inside
a root that points out of it is refused like a path outside. No roots: every path is refused.

The check resolves the path when the call is made; the roots must not be writable by anyone who should
not choose what chiron reads or changes (a directory swapped for a link after the check is not caught).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chiron.errors import UsageError


class PathRefused(UsageError):
    """A path argument outside the allowed roots (exit 2: the caller's input)."""


@dataclass(frozen=True)
class Roots:
    """The allowed roots, each resolved once (the operator chose them, links in them included)."""

    roots: tuple[Path, ...]  # resolved
    named: tuple[Path, ...] = ()  # as the operator wrote them (absolute): a path may be written under either

    @classmethod
    def of(cls, paths: list[Path]) -> Roots:
        resolved, named = [], []
        for p in paths:
            real = Path(os.path.realpath(p))
            if not real.is_dir():
                raise UsageError(f"allowed root {p} (--allow-path, [mcp] allow_paths): no such directory")
            resolved.append(real)
            named.append(Path(os.path.normpath(os.path.abspath(p))))
        return cls(tuple(dict.fromkeys(resolved)), tuple(dict.fromkeys(named + resolved)))

    def check(self, given: str | os.PathLike[str], what: str) -> Path:
        """``given`` resolved, if it and its resolution lie under a root; else PathRefused naming it."""
        text = os.fspath(given)
        if not text or "\x00" in text:
            raise PathRefused(f"{what}: not a path: {text!r}")
        path = Path(text)
        if not path.is_absolute():
            raise PathRefused(f"{what}: {text}: give an absolute path (under {self.describe()})")
        if not self.roots:
            raise PathRefused(
                f"{what}: {text}: no path is allowed",
                hint="start chiron mcp with --allow-path DIR, or set [mcp] allow_paths",
            )
        written = Path(os.path.normpath(path))
        real = Path(os.path.realpath(path))
        if not self.covers(written, self.named or self.roots):
            raise PathRefused(f"{what}: {text}: outside the allowed roots ({self.describe()})")
        if not self.covers(real, self.roots):
            raise PathRefused(f"{what}: {text}: resolves to {real}, outside the allowed roots ({self.describe()})")
        return real

    @staticmethod
    def covers(path: Path, roots: tuple[Path, ...]) -> bool:
        return any(path.is_relative_to(root) for root in roots)

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots) or "none allowed"
