"""``chiron mcp``: serve chiron's tools to an MCP client over stdio (docs/mcp.md)."""

from pathlib import Path
from typing import Annotated

import typer

from chiron.cli.app import app, flag, log, settings


@app.command("mcp")
def mcp(
    allow_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-path",
            help="A directory the tools may read (and, with mcp_mutations, change); repeat. Adds to [mcp] allow_paths.",
        ),
    ] = None,
    docs: Annotated[
        Path | None, typer.Option("--docs", help="Runbooks directory to serve (default: the packaged runbooks).")
    ] = None,
) -> None:
    """Run the MCP server on stdin/stdout until the client closes it. Read-only tools always; the tools that
    change something only with the mcp_mutations flag (chiron config flags), and then only with confirm: true."""
    from dataclasses import replace

    try:
        from chiron.mcpserver.options import McpOptions
        from chiron.mcpserver.server import build_server
    except ImportError as exc:
        from chiron.errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"chiron mcp needs the MCP SDK ({exc.name} is missing)",
            hint="install chiron with its dependencies (the mcp package is one of them)",
        ) from None
    mutations = flag("mcp_mutations").value
    opts = McpOptions.from_settings(settings(), list(allow_path or []), mutations)
    if docs is not None:
        opts = replace(opts, docs=docs)
    roots = opts.roots.describe()
    changes = "with the tools that change something (confirm: true)" if mutations else "read-only"
    log("notice", f"chiron mcp on stdio, {changes}; allowed roots: {roots}")
    build_server(opts).run("stdio")
