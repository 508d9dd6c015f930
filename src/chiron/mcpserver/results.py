"""Tool results: a report as structured content (with its JSON as text for clients that read only text),
or a chiron error as a structured failure (``chiron.error/1``, ``isError``), never an exception."""

import json
from collections.abc import Callable
from typing import Any

from mcp.types import CallToolResult, TextContent

from chiron.errors import ChironError, EnvironmentProblem, UsageError, VerificationError


def report(doc: dict[str, Any]) -> CallToolResult:
    """A successful call: ``doc`` (one of docs/schemas/) is the structured content."""
    text = json.dumps(doc, sort_keys=True, default=str)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=doc)


def failure(exc: ChironError) -> CallToolResult:
    """A call that chiron refused or could not do: the one-line message and its exit code."""
    doc: dict[str, Any] = {"schema": "chiron.error/1", "error": exc.diagnostics(), "exit_code": int(exc.exit_code)}
    if isinstance(exc, VerificationError):
        doc["problems"] = exc.problems
    if getattr(exc, "details", None):
        doc["details"] = exc.details  # type: ignore[attr-defined]
    text = f"chiron: error: {exc.diagnostics()} (exit code {int(exc.exit_code)})"
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=doc, is_error=True)


def guarded(call: Callable[[], dict[str, Any]]) -> CallToolResult:
    """Run one engine call: its report, or the error it raised as a structured failure."""
    try:
        return report(call())
    except ChironError as exc:
        return failure(exc)
    except OSError as exc:
        # An I/O problem outside chiron's checks, named as the CLI names it (exit 3; a missing file 2).
        where = ", ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "(the system named no file)"
        message = f"{where}: {exc.strerror or exc}"
        return failure(UsageError(message) if isinstance(exc, FileNotFoundError) else EnvironmentProblem(message))
