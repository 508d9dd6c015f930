"""The documents the MCP server hands out: runbooks, JSON schemas, the exit codes.

They are docs/ of the repository, packaged into the wheel (and so into every tool zip) as package data of
``chiron.mcpserver`` (``src/chiron/mcpserver/shipped-docs`` links to ``docs/``; a name that is not a
Python identifier, so that setuptools does not take it for a package). ``[mcp] docs`` (``--docs DIR``)
names another runbook directory, e.g. a site's own runbooks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from chiron.errors import ExitCode, UsageError

MAX_DOC = 1 << 20


def packaged() -> Traversable:
    return resources.files("chiron.mcpserver") / "shipped-docs"


@dataclass(frozen=True)
class Runbook:
    name: str  # the file's stem, e.g. install-and-upgrade
    title: str  # its first heading
    text: str


def runbooks(directory: Path | None = None) -> list[Runbook]:
    """Every runbook (``*.md``) of ``directory``, else the packaged ones, sorted by name."""
    where: Traversable | Path = directory if directory is not None else packaged() / "runbooks"
    if directory is not None and not directory.is_dir():
        raise UsageError(f"--docs {directory}: no such directory")
    out = []
    for item in sorted(where.iterdir(), key=lambda t: t.name):
        if not item.name.endswith(".md") or not item.is_file():
            continue
        text = item.read_bytes()[:MAX_DOC].decode("utf-8", errors="replace")
        heading = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), item.name)
        out.append(Runbook(item.name.removesuffix(".md"), heading, text))
    return out


@cache
def schema(name: str) -> dict[str, Any]:
    """The published JSON schema of an output (``verify`` for docs/schemas/verify.schema.json)."""
    data: dict[str, Any] = json.loads((packaged() / "schemas" / f"{name}.schema.json").read_text("utf-8"))
    return data


_ROW = re.compile(r"^\|(.+)\|\s*$")


def _rows(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header):
            rows = []
            for row in lines[i + 2 :]:
                m = _ROW.match(row)
                if m is None:
                    break
                rows.append([cell.strip() for cell in m.group(1).split(" | ")])
            return rows
    return []


def explain(code: int) -> dict[str, Any]:
    """What an exit code means, what to do, and which error classes give it (docs/exit-codes.md)."""
    text = (packaged() / "exit-codes.md").read_text("utf-8")
    meaning = next((r for r in _rows(text, "| Code |") if r[0] == str(code)), None)
    classes = []
    for row in _rows(text, "| Class"):
        if len(row) >= 3 and row[1] == str(code):
            name = re.search(r"`([A-Za-z]+)`", row[0])
            classes.append({"class": name.group(1) if name else row[0], "raised_for": row[2]})
    known = meaning is not None
    return {
        "schema": "chiron.exit-code/1",
        "code": code,
        "known": known,
        "name": ExitCode(code).name.lower() if code in set(ExitCode) else ("interrupted" if code == 130 else None),
        "meaning": meaning[1] if meaning else "chiron does not exit with this code (docs/exit-codes.md lists them)",
        "what_to_do": meaning[2] if meaning and len(meaning) > 2 else None,
        "classes": classes,
    }
