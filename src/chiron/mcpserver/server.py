"""The MCP server: chiron's tools with typed inputs and the outputs of docs/schemas/, and the runbooks
and exit codes as resources.

``build_server(opts)`` makes it; ``chiron mcp`` runs it over stdio. ``http_app(opts)`` is the
streamable-HTTP ASGI app for ``chiron serve`` to mount at ``/mcp`` behind its tokens (when the
``mcp_http`` flag is on): the server is the same, only the transport differs.
"""

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resources import Resource, TextResource
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations

from chiron import __version__
from chiron.mcpserver import docs
from chiron.mcpserver.mutations import mutating
from chiron.mcpserver.options import McpOptions
from chiron.mcpserver.tools import read_only

INSTRUCTIONS = (
    "chiron ships Python wheelhouses and container images into air-gapped networks as one self-verifying "
    "appliance file. These tools inspect, verify and diff appliances, read an installed host's status, "
    "readiness and audit log, and a mirror store's status; policy_check is a dry run of the mirror policy. "
    "Paths must be absolute and under the roots the operator allowed. Tools that change something exist only "
    "when the operator turned on the mcp_mutations flag, and need confirm: true. The runbooks are resources."
)


def tools(opts: McpOptions) -> list[Tool]:
    """Every tool this server offers: the read-only ones, and the mutations when their flag is on."""
    out = []
    for fn, schema, title, changes in [
        *((fn, s, t, False) for fn, s, t in read_only(opts)),
        *((fn, s, t, True) for fn, s, t in (mutating(opts) if opts.mutations else [])),
    ]:
        notes = ToolAnnotations(read_only_hint=not changes, destructive_hint=changes, open_world_hint=False)
        tool = Tool.from_function(fn, title=title, annotations=notes)
        # The output is the command's --json report: its published schema is the tool's outputSchema.
        tool.fn_metadata.output_schema = docs.schema(schema)
        out.append(tool)
    return out


def resources(opts: McpOptions) -> list[Resource]:
    """The runbooks (``chiron://runbooks/NAME``) and the exit codes (``chiron://docs/exit-codes``)."""
    out: list[Resource] = [
        TextResource(
            uri=f"chiron://runbooks/{book.name}",
            name=book.name,
            title=book.title,
            description=f"Runbook: {book.title}",
            mime_type="text/markdown",
            text=book.text,
        )
        for book in docs.runbooks(opts.docs)
    ]
    codes = (docs.packaged() / "exit-codes.md").read_text("utf-8")
    out.append(
        TextResource(
            uri="chiron://docs/exit-codes",
            name="exit-codes",
            title="Exit codes",
            description="Every exit code, what it means and what to do",
            mime_type="text/markdown",
            text=codes,
        )
    )
    return out


def build_server(opts: McpOptions) -> MCPServer[Any]:
    """The MCP server for ``opts`` (which roots, whether the mutation tools exist)."""
    return MCPServer(
        name="chiron",
        title="chiron",
        instructions=INSTRUCTIONS,
        version=__version__,
        tools=tools(opts),
        resources=resources(opts),
        log_level="WARNING",
    )


def http_app(opts: McpOptions, path: str = "/mcp") -> Any:
    """The streamable-HTTP ASGI app (Starlette) of the same server, for ``chiron serve`` to mount; the
    service puts its token check in front of it."""
    return build_server(opts).streamable_http_app(streamable_http_path=path, stateless_http=True)
