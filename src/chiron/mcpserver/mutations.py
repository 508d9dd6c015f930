"""The tools that change something: mirror refresh, upgrade, rollback.

They exist only when the ``mcp_mutations`` flag is on (chiron.core.flags), and each call needs
``confirm: true``. They call the engines the CLI commands call, so they are recorded where the CLI's are:
upgrade and rollback in the host's audit log (``chiron audit verify``), a refresh in the store's
``state.json`` (``chiron mirror status``). An upgrade started from a server that runs from another
archive than the installed tool is run BY the installed tool, as ``chiron upgrade`` hands over.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Annotated, Any

from mcp.types import CallToolResult
from pydantic import Field

from chiron.errors import ChironError, EnvironmentProblem, ExitCode, Refused, UsageError
from chiron.mcpserver.options import McpOptions
from chiron.mcpserver.results import failure, guarded
from chiron.mcpserver.tools import Prefix, StateDir, Store, host_paths, need_path

Confirm = Annotated[
    bool, Field(description="Must be true: this changes the host or the store (and is recorded like the CLI's).")
]


def _unconfirmed(tool: str) -> CallToolResult:
    return failure(
        Refused(f"{tool} changes something: nothing was done", hint="call it again with confirm: true to go ahead")
    )


# Long by design: one small closure per tool that changes something, listed together (as read_only).
def mutating(opts: McpOptions) -> list[tuple[Any, str, str]]:
    """(function, output schema name, title) of every tool that changes something, bound to ``opts``
    (closures, as in chiron.mcpserver.tools.read_only)."""

    def mirror_refresh(
        confirm: Confirm = False,
        store: Store = None,
        spec: Annotated[str | None, Field(description="The spec (default: the one the store remembers).")] = None,
        force: Annotated[bool, Field(description="Build and sign a new version even if nothing changed.")] = False,
    ) -> CallToolResult:
        """Refresh a mirror store: re-resolve the spec, fetch what is new, apply the policy, sign version N+1
        if anything changed (as chiron mirror refresh). Needs confirm: true."""
        if not confirm:
            return _unconfirmed("mirror_refresh")
        from chiron.engines.mirror import RefreshOptions, refresh

        def call() -> dict[str, Any]:
            if opts.tool_wheels is None:
                raise UsageError(
                    "mirror_refresh: chiron's own wheels are not configured", hint="set [mirror] tool_wheels"
                )
            options = RefreshOptions(
                store=need_path(opts.path(store, opts.store, "store")),
                spec=opts.path(spec, None, "spec"),
                tool_wheels=opts.tool_wheels,
                force=force,
                show_progress=False,
            )
            return refresh(options).as_dict()

        return guarded(call)

    def upgrade(
        archive: Annotated[str, Field(description="The newer appliance (absolute path, under an allowed root).")],
        confirm: Confirm = False,
        prefix: Prefix = None,
        state_dir: StateDir = None,
        allow_downgrade: Annotated[bool, Field(description="Install an older release deliberately.")] = False,
    ) -> CallToolResult:
        """Upgrade the host (as chiron upgrade): verify against the host's trusted metadata, install beside the
        current release, health-check, switch. Recorded in the host's audit log. Needs confirm: true."""
        if not confirm:
            return _unconfirmed("upgrade")
        from chiron.engines.host import InstallOptions
        from chiron.engines.host import upgrade as run_upgrade
        from chiron.engines.host.handover import installed_tool

        def call() -> dict[str, Any]:
            path = need_path(opts.path(archive, None, "archive"))
            where, state = host_paths(opts, prefix, state_dir)
            installed = installed_tool(where)
            if installed is not None:
                return _by_installed(installed, path, where, state, allow_downgrade, opts)
            options = InstallOptions(
                archive=path,
                prefix=where,
                state_dir=state,
                allow_downgrade=allow_downgrade,
                installer=opts.installer,
                images=opts.images,
                registry=opts.registry,
                wait=opts.wait,
            )
            return run_upgrade(options).as_dict()

        return guarded(call)

    def rollback(confirm: Confirm = False, prefix: Prefix = None, state_dir: StateDir = None) -> CallToolResult:
        """Switch the host back to its previous release (as chiron rollback; recorded in the audit log).
        Needs confirm: true."""
        if not confirm:
            return _unconfirmed("rollback")
        from chiron.engines.host import rollback as run_rollback

        return guarded(lambda: run_rollback(*host_paths(opts, prefix, state_dir), opts.wait).as_dict())

    return [
        (mirror_refresh, "mirror-refresh", "Refresh a mirror store"),
        (upgrade, "host-result", "Upgrade the host"),
        (rollback, "host-result", "Roll the host back"),
    ]


def _by_installed(
    installed: Path, archive: Path, prefix: Path, state_dir: Path | None, allow_downgrade: bool, opts: McpOptions
) -> dict[str, Any]:
    """``chiron upgrade`` run by the installed tool: a new archive's own code must not decide to trust it."""
    argv = [str(installed), "upgrade", str(archive), "--prefix", str(prefix), "--json"]
    argv += ["--installer", opts.installer, "--images", opts.images, "--wait", str(opts.wait)]
    argv += ["--registry", opts.registry] if opts.registry else []
    argv += ["--state-dir", str(state_dir)] if state_dir else []
    argv += ["--allow-downgrade"] if allow_downgrade else []
    env = {**os.environ, "CHIRON_HANDED_OVER": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    try:
        doc: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise EnvironmentProblem(
            f"{installed} upgrade: exit {proc.returncode}, no JSON report: {proc.stderr.strip()[-300:]}"
        ) from None
    if doc.get("schema") == "chiron.error/1":
        raise _Reported(doc)
    return doc


class _Reported(ChironError):
    """An error the installed tool reported (its exit code and message, passed on)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(str(doc.get("error", "the installed tool failed")))
        self.exit_code = ExitCode(int(doc.get("exit_code", ExitCode.ENVIRONMENT)))
        self.details = doc.get("details")
