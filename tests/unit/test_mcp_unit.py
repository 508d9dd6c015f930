"""The MCP server's make-up, in process: which tools exist, their published schemas, confirm, the HTTP app."""

from __future__ import annotations

import json
from pathlib import Path

from chiron.mcpserver.options import McpOptions
from chiron.mcpserver.paths import Roots
from chiron.mcpserver.server import http_app, tools

from conftest import REPO

MUTATIONS = {"mirror_refresh", "upgrade", "rollback"}


def _tools(mutations: bool, roots: tuple[Path, ...] = ()) -> dict[str, object]:
    return {t.name: t for t in tools(McpOptions(roots=Roots(roots), mutations=mutations))}


def test_mutation_tools_exist_only_with_their_flag() -> None:
    off, on = _tools(False), _tools(True)
    assert not set(off) & MUTATIONS and set(on) == set(off) | MUTATIONS
    for name in MUTATIONS:
        tool = on[name]
        assert tool.parameters["properties"]["confirm"]["default"] is False  # type: ignore[attr-defined]
        assert tool.annotations.destructive_hint and not tool.annotations.read_only_hint  # type: ignore[attr-defined]


def test_every_output_schema_is_a_published_schema() -> None:
    for tool in _tools(True).values():
        schema = tool.output_schema  # type: ignore[attr-defined]
        const = schema["properties"]["schema"]["const"]
        path = REPO / "docs" / "schemas" / (const.removeprefix("chiron.").split("/")[0] + ".schema.json")
        assert schema == json.loads(path.read_text()), tool.name  # type: ignore[attr-defined]


def test_unconfirmed_mutation_does_nothing(tmp_path: Path) -> None:
    fn = _tools(True, (tmp_path,))["rollback"].fn  # type: ignore[attr-defined]
    result = fn(prefix=str(tmp_path / "nothing-here"))
    assert result.is_error and result.structured_content["exit_code"] == 4
    assert "confirm: true" in result.structured_content["error"] and not (tmp_path / "nothing-here").exists()


def test_http_app_for_chiron_serve() -> None:
    app = http_app(McpOptions(roots=Roots(())))
    assert [getattr(r, "path", None) for r in app.routes] == ["/mcp"]
