"""What one MCP server may touch and the defaults it fills in (from chiron's settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.mcpserver.paths import Roots


@dataclass(frozen=True)
class McpOptions:
    """The allowed roots, whether the mutation tools exist, and the settings the tools default to."""

    roots: Roots
    mutations: bool = False  # the mcp_mutations flag, evaluated when the server is made
    prefix: Path = Path("/opt/chiron")
    state_dir: Path | None = None
    store: Path = Path("mirror")
    tool_wheels: Path | None = None
    cache_dir: Path | None = None
    installer: str = "auto"
    images: str = "load"
    registry: str | None = None
    wait: float = 0.0
    docs: Path | None = None

    @classmethod
    def from_settings(cls, effective: Any, allow_paths: list[Path], mutations: bool) -> McpOptions:
        """The options from chiron.core.settings.Effective, with the roots allowed on top of [mcp] allow_paths
        (for ``chiron mcp`` and for ``chiron serve`` mounting the server at /mcp)."""
        s = effective.settings
        return cls(
            roots=Roots.of([*s.mcp.allow_paths, *allow_paths]),
            mutations=mutations,
            prefix=s.host.prefix,
            state_dir=s.host.state_dir,
            store=s.mirror.store,
            tool_wheels=s.mirror.tool_wheels,
            cache_dir=s.mirror.cache_dir,
            installer=s.host.installer,
            images=s.host.images,
            registry=s.host.registry,
            wait=s.host.wait,
            docs=s.mcp.docs,
        )

    def path(self, given: str | None, default: Path | None, what: str) -> Path | None:
        """A path argument (or the setting it defaults to), checked against the allowed roots."""
        if given is None and default is None:
            return None
        return self.roots.check(given if given is not None else default.absolute(), what)  # type: ignore[union-attr]
