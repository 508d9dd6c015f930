"""chiron mcp over stdio, driven by the MCP SDK's own client: tools on real appliances and a real host,
results checked against the published schemas, the mutation tools behind their flag and confirm: true,
and paths outside the allowed roots refused."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from jsonschema import Draft202012Validator
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

from chiron.archive.reader import read_layout
from chiron.cli import app as cli_app
from chiron.cli import main

from conftest import REPO
from helpers import rewrite_archive

T = TypeVar("T")
READ_ONLY = {
    "inspect",
    "verify",
    "diff",
    "host_status",
    "doctor",
    "audit_verify",
    "mirror_status",
    "policy_check",
    "explain_exit_code",
}
MUTATIONS = {"mirror_refresh", "upgrade", "rollback"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHIRON_", "OTEL_"))}
    return env | {"CHIRON_SYSTEM_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **extra}


@asynccontextmanager
async def _session(args: list[str], env: dict[str, str], program: Path | None = None) -> AsyncIterator[ClientSession]:
    """``chiron mcp ARGS`` run by this interpreter, or by ``program`` (an appliance file)."""
    command, first = (str(program), []) if program else (sys.executable, ["-m", "chiron"])
    params = StdioServerParameters(command=command, args=[*first, "mcp", *args], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def with_server(
    args: list[str], env: dict[str, str], steps: Callable[[ClientSession], Awaitable[T]], program: Path | None = None
) -> T:
    """Start ``chiron mcp ARGS`` as a subprocess, run ``steps`` against it, stop it."""

    async def go() -> T:
        async with _session(args, env, program) as session:
            return await steps(session)

    return anyio.run(go)


def _validate(result: CallToolResult, schema_file: str) -> dict[str, Any]:
    doc = result.structured_content
    assert doc is not None, result.content
    schema = json.loads((REPO / "docs" / "schemas" / schema_file).read_text())
    problems = [e.message for e in Draft202012Validator(schema).iter_errors(doc)]
    assert not problems, problems
    return doc


def _allow(*paths: Path) -> list[str]:
    return [a for p in paths for a in ("--allow-path", str(p))]


def test_tools_on_real_appliances(appliance: Path, keys: Path, tmp_path: Path) -> None:
    """inspect, verify, diff and explain on the session appliance; a tampered copy verifies as a structured
    failure (ok: false with its problems), not an exception."""
    work = tmp_path / "work"
    work.mkdir()
    tampered = work / "tampered.pex"
    wheel = next(m.name for m in read_layout(appliance).members if m.name.startswith("wheels/"))
    rewrite_archive(appliance, tampered, replace={wheel: b"not the signed wheel"})
    root = keys / "1.root.json"

    async def steps(s: ClientSession) -> dict[str, CallToolResult]:
        listed = await s.list_tools()
        assert {t.name for t in listed.tools} == READ_ONLY  # no mutation tool: its flag is off
        assert all(
            t.output_schema and t.output_schema["$id"].startswith("https://chiron.invalid/") for t in listed.tools
        )
        assert all(t.annotations and t.annotations.read_only_hint for t in listed.tools)
        return {
            "inspect": await s.call_tool("inspect", {"archive": str(appliance)}),
            "verify": await s.call_tool("verify", {"archive": str(appliance), "root": str(root)}),
            "tofu": await s.call_tool("verify", {"archive": str(appliance)}),
            "tampered": await s.call_tool("verify", {"archive": str(tampered), "root": str(root)}),
            "diff": await s.call_tool("diff", {"old": str(appliance), "new": str(tampered)}),
            "explain": await s.call_tool("explain_exit_code", {"code": 4}),
            "missing": await s.call_tool("inspect", {"archive": str(work / "missing.pex")}),
            "garbage": await s.call_tool("inspect", {"archive": str(root)}),
            "no store": await s.call_tool("policy_check", {"store": str(work / "store")}),
        }

    got = with_server(_allow(appliance.parent, keys, work), _env(tmp_path), steps)
    inspected = _validate(got["inspect"], "inspect.schema.json")
    assert not got["inspect"].is_error and inspected["verified"] is False and inspected["name"] == "demo"
    verified = _validate(got["verify"], "verify.schema.json")
    assert verified["ok"] and verified["trust_anchor"] == "--root file" and verified["problems"] == []
    tofu = _validate(got["tofu"], "verify.schema.json")
    assert tofu["ok"] and tofu["trust_anchor"] == "embedded root (trust on first use)" and tofu["notices"]
    bad = _validate(got["tampered"], "verify.schema.json")
    assert not got["tampered"].is_error and bad["ok"] is False and bad["problems"]
    assert any(wheel in p for p in bad["problems"]), bad["problems"]
    assert _validate(got["diff"], "diff.schema.json")["schema"] == "chiron.diff/1"
    explained = _validate(got["explain"], "exit-code.schema.json")
    assert explained["name"] == "refused" and any(c["class"] == "Refused" for c in explained["classes"])
    for key, message in (
        ("missing", "missing.pex: no such file"),
        ("garbage", ""),
        ("no store", f"{work / 'store'}: not a mirror store"),
    ):
        result = got[key]
        assert result.is_error and _validate(result, "error.schema.json")["exit_code"] in (1, 2), key
        assert message in result.structured_content["error"]  # type: ignore[index]


def test_paths_outside_the_allowed_roots_are_refused(appliance: Path, tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    shutil.copyfile(appliance, outside / "a.pex")
    (allowed / "link.pex").symlink_to(outside / "a.pex")  # inside the root, pointing out of it

    async def steps(s: ClientSession) -> list[CallToolResult]:
        return [
            await s.call_tool("inspect", {"archive": str(outside / "a.pex")}),
            await s.call_tool("inspect", {"archive": str(allowed / "link.pex")}),
            await s.call_tool("verify", {"archive": str(allowed / ".." / "outside" / "a.pex")}),
            await s.call_tool("host_status", {}),  # the default prefix, /opt/chiron, is not allowed either
            await s.call_tool("mirror_status", {"store": "relative/store"}),
        ]

    results = with_server(_allow(allowed), _env(tmp_path), steps)
    messages = []
    for result in results:
        doc = _validate(result, "error.schema.json")
        assert result.is_error and doc["exit_code"] == 2
        messages.append(doc["error"])
    assert messages[0] == f"archive: {outside / 'a.pex'}: outside the allowed roots ({allowed})"
    assert messages[1].startswith(f"archive: {allowed / 'link.pex'}: resolves to {outside / 'a.pex'}, outside")
    assert "outside the allowed roots" in messages[2]
    assert messages[3] == f"prefix: /opt/chiron: outside the allowed roots ({allowed})"
    assert "give an absolute path" in messages[4]


def _install(appliance: Path, prefix: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_app.state.update({"verbose": False, "json": False, "log_format": "human"})
    with pytest.raises(SystemExit) as exc:
        main(["install", str(appliance), "--prefix", str(prefix), "--root", str(keys / "1.root.json"), "--json"])
    assert exc.value.code in (0, None), capsys.readouterr()


def _audit(prefix: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (prefix / "state" / "audit.jsonl").read_text().splitlines()]


def test_host_tools_and_mutations_behind_the_flag(
    appliance: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read-only host tools on a real installed host; with mcp_mutations on (environment or settings file) the
    mutation tools exist, refuse without confirm: true, and what they do is in the audit log like the CLI's."""
    prefix = tmp_path / "host"
    _install(appliance, prefix, keys, capsys)
    (tmp_path / "xdg" / "chiron").mkdir(parents=True)
    (tmp_path / "xdg" / "chiron" / "config.toml").write_text(f'[host]\nprefix = "{prefix}"\n')
    allow = _allow(prefix, appliance.parent)

    async def read_only(s: ClientSession) -> list[CallToolResult]:
        names = {t.name for t in (await s.list_tools()).tools}
        assert names == READ_ONLY and not names & MUTATIONS
        return [
            await s.call_tool("host_status", {}),  # the prefix from the settings file
            await s.call_tool("audit_verify", {"prefix": str(prefix)}),
            await s.call_tool("doctor", {"archive": str(appliance), "prefix": str(prefix)}),
            await s.call_tool("upgrade", {"archive": str(appliance), "confirm": True}),  # no such tool
        ]

    status, audit, doctor, absent = with_server(allow, _env(tmp_path), read_only)
    assert _validate(status, "status.schema.json")["current"]["version"] == "1.0.0"
    assert _validate(audit, "audit-verify.schema.json")["ok"] is True
    assert _validate(doctor, "doctor.schema.json")["checks"]
    assert absent.is_error and "upgrade" in str(absent.content)
    before = _audit(prefix)

    async def mutations(s: ClientSession) -> list[CallToolResult]:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == READ_ONLY | MUTATIONS
        assert tools["upgrade"].annotations and tools["upgrade"].annotations.destructive_hint
        assert "confirm" in tools["upgrade"].input_schema["properties"]
        return [
            await s.call_tool("upgrade", {"archive": str(appliance)}),  # no confirm: nothing is done
            await s.call_tool("upgrade", {"archive": str(appliance), "confirm": True}),
            await s.call_tool("rollback", {"confirm": True}),
            await s.call_tool("upgrade", {"archive": str(tmp_path / "elsewhere.pex"), "confirm": True}),
        ]

    unconfirmed, upgraded, rolled_back, outside = with_server(
        allow, _env(tmp_path, CHIRON_FLAG_MCP_MUTATIONS="true"), mutations
    )
    refused = _validate(unconfirmed, "error.schema.json")
    assert unconfirmed.is_error and refused["exit_code"] == 4 and "confirm: true" in refused["error"]
    assert len(_audit(prefix)) == len(before) + 1  # only the confirmed upgrade was recorded
    result = _validate(upgraded, "host-result.schema.json")
    assert not upgraded.is_error and result["op"] == "upgrade" and result["changed"] is False  # already installed
    entry = _audit(prefix)[-1]
    assert (entry["op"], entry["result"], entry["archive"]) == ("upgrade", "noop", str(appliance))
    no_previous = _validate(rolled_back, "error.schema.json")
    assert rolled_back.is_error and no_previous["exit_code"] == 4 and "no previous release" in no_previous["error"]
    assert outside.is_error and "outside the allowed roots" in _validate(outside, "error.schema.json")["error"]
    # The same server with the flag set in the settings file instead of the environment.
    (tmp_path / "xdg" / "chiron" / "config.toml").write_text(
        f'[host]\nprefix = "{prefix}"\n[flags]\nmcp_mutations = true\n'
    )

    async def listed(s: ClientSession) -> set[str]:
        return {t.name for t in (await s.list_tools()).tools}

    assert with_server(allow, _env(tmp_path), listed) == READ_ONLY | MUTATIONS


def test_runbooks_are_resources(tmp_path: Path) -> None:
    async def steps(s: ClientSession) -> tuple[list[str], str, str]:
        uris = [str(r.uri) for r in (await s.list_resources()).resources]
        book = (await s.read_resource("chiron://runbooks/install-and-upgrade")).contents[0]
        codes = (await s.read_resource("chiron://docs/exit-codes")).contents[0]
        return uris, book.text, codes.text  # type: ignore[union-attr]

    uris, book, codes = with_server([], _env(tmp_path), steps)
    on_disk = sorted(p.stem for p in (REPO / "docs" / "runbooks").glob("*.md"))
    assert sorted(u.removeprefix("chiron://runbooks/") for u in uris if "runbooks" in u) == on_disk
    assert book == (REPO / "docs" / "runbooks" / "install-and-upgrade.md").read_text()
    assert codes == (REPO / "docs" / "exit-codes.md").read_text()


def test_the_appliance_itself_serves_mcp(appliance: Path, keys: Path, pex_root: Path, tmp_path: Path) -> None:
    """The tool zip carries the MCP SDK and the packaged runbooks: ./chiron.pex mcp works on a bare host."""

    async def steps(s: ClientSession) -> tuple[set[str], CallToolResult, str]:
        names = {t.name for t in (await s.list_tools()).tools}
        itself = await s.call_tool("verify", {"archive": str(appliance), "root": str(keys / "1.root.json")})
        book = (await s.read_resource("chiron://runbooks/verify-on-air-gapped-host")).contents[0]
        return names, itself, book.text  # type: ignore[union-attr]

    env = _env(tmp_path, PEX_ROOT=str(pex_root))
    names, itself, book = with_server(_allow(appliance.parent, keys), env, steps, program=appliance)
    assert names == READ_ONLY
    assert _validate(itself, "verify.schema.json")["ok"] is True
    assert book == (REPO / "docs" / "runbooks" / "verify-on-air-gapped-host.md").read_text()
