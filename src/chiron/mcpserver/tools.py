"""The read-only tools: each calls the engine the CLI command calls and returns the same JSON report
(docs/schemas/), or a structured failure. Nothing here changes a file."""

from pathlib import Path
from typing import Annotated, Any

from mcp.types import CallToolResult
from pydantic import Field

from chiron.errors import UsageError
from chiron.mcpserver import docs
from chiron.mcpserver.options import McpOptions
from chiron.mcpserver.results import guarded

Archive = Annotated[str, Field(description="Absolute path of an appliance file, under an allowed root.")]
Prefix = Annotated[
    str | None, Field(description="The host prefix (absolute; default: [host] prefix of chiron's settings).")
]
StateDir = Annotated[str | None, Field(description="The host state directory (default: PREFIX/state).")]
Store = Annotated[str | None, Field(description="A mirror store directory (default: [mirror] store).")]


# Long by design: one small closure per tool, listed together so the set of read-only tools reads in one place.
def read_only(opts: McpOptions) -> list[tuple[Any, str, str]]:
    """(function, output schema name, title) of every read-only tool, bound to ``opts``.

    Long, but only as a list: each tool is a short closure over ``opts`` whose signature (typed, described
    arguments) and docstring are what the MCP SDK publishes as the tool's input schema and description."""

    def inspect(archive: Archive) -> CallToolResult:
        """Describe an appliance: packages, platforms, images, signed targets, TUF roles. Does NOT verify."""
        from chiron.engines.inspect import inspect_archive

        return guarded(lambda: inspect_archive(need_path(opts.path(archive, None, "archive"))))

    def verify(
        archive: Archive,
        root: Annotated[str | None, Field(description="Trusted root metadata file obtained out of band.")] = None,
        root_sha256: Annotated[str | None, Field(description="sha256 of the trusted root (64 hex digits).")] = None,
    ) -> CallToolResult:
        """Verify every byte of an appliance against its TUF metadata. A failed verification is a report with
        ok: false and its problems. Without root or root_sha256 the appliance's own root is trusted (noted)."""
        from chiron.engines.verify import verify as run_verify

        def call() -> dict[str, Any]:
            path = need_path(opts.path(archive, None, "archive"))
            root_file = opts.path(root, None, "root")
            return run_verify(path, root_file=root_file, root_sha256=root_sha256, show_progress=False).as_dict()

        return guarded(call)

    def diff(
        old: Annotated[str, Field(description="The older appliance (absolute path, under an allowed root).")],
        new: Annotated[str, Field(description="The newer appliance (absolute path, under an allowed root).")],
    ) -> CallToolResult:
        """What changed between two appliances: packages added, removed, upgraded (versions, sizes, licences)
        and images."""
        from chiron.engines.diff import diff as run_diff

        return guarded(lambda: run_diff(need_path(opts.path(old, None, "old")), need_path(opts.path(new, None, "new"))))

    def host_status(prefix: Prefix = None, state_dir: StateDir = None) -> CallToolResult:
        """An installed host: releases, the current one and its packages, trusted metadata and expiry, root
        fingerprint, pending transaction, last operations."""
        from chiron.engines.host import status

        return guarded(lambda: status(*host_paths(opts, prefix, state_dir)))

    def doctor(
        archive: Annotated[str | None, Field(description="The appliance to prepare for (optional).")] = None,
        prefix: Annotated[str | None, Field(description="Where it is or will be installed (optional).")] = None,
        state_dir: StateDir = None,
    ) -> CallToolResult:
        """Check this host can do the next operation: what is missing and the fix. ok: false = not ready."""
        from chiron.engines.doctor import doctor as run_doctor

        def call() -> dict[str, Any]:
            checks = run_doctor(
                opts.path(archive, None, "archive"),
                opts.path(prefix, None, "prefix"),
                opts.path(state_dir, None, "state_dir"),
            )
            failed = [c for c in checks if not c.ok and c.severity == "error"]
            return {"schema": "chiron.doctor/1", "ok": not failed, "checks": [c.as_dict() for c in checks]}

        return guarded(call)

    def audit_verify(prefix: Prefix = None, state_dir: StateDir = None) -> CallToolResult:
        """Check that no entry of the host's audit log was edited, inserted or removed (ok: false if so)."""
        from chiron.engines.host import audit_verify as run_audit_verify

        return guarded(lambda: run_audit_verify(*host_paths(opts, prefix, state_dir)).as_dict())

    def mirror_status(store: Store = None) -> CallToolResult:
        """What a mirror store holds: versions built, the latest appliance, artifacts on disk."""
        from chiron.engines.mirror import status

        return guarded(lambda: status(need_path(opts.path(store, opts.store, "store"))))

    def policy_check(
        spec: Annotated[str | None, Field(description="An appliance spec whose lock (python.lock) to check.")] = None,
        store: Annotated[str | None, Field(description="A mirror store whose latest lock to check.")] = None,
        policy: Annotated[
            str | None, Field(description="The policy file (default: the store's, else policy.toml beside the spec).")
        ] = None,
    ) -> CallToolResult:
        """Dry run of the mirror policy on a spec's lock or a store's latest lock: which packages it would
        refuse. Nothing is resolved, fetched or written. Give spec or store (default: [mirror] store)."""
        from chiron.engines.policycheck import check_spec, check_store

        def call() -> dict[str, Any]:
            if spec is not None and store is not None:
                raise UsageError("policy_check: give spec or store, not both")
            policy_file = opts.path(policy, None, "policy")
            if spec is not None:
                return check_spec(need_path(opts.path(spec, None, "spec")), policy_file, opts.cache_dir)
            return check_store(need_path(opts.path(store, opts.store, "store")), policy_file)

        return guarded(call)

    def explain_exit_code(
        code: Annotated[int, Field(description="An exit code of a chiron command, e.g. 4.", ge=0, le=255)],
    ) -> CallToolResult:
        """What a chiron exit code means, what to do about it, and which errors give it (docs/exit-codes.md)."""
        return guarded(lambda: docs.explain(code))

    return [
        (inspect, "inspect", "Inspect an appliance"),
        (verify, "verify", "Verify an appliance"),
        (diff, "diff", "Diff two appliances"),
        (host_status, "status", "Host status"),
        (doctor, "doctor", "Host readiness"),
        (audit_verify, "audit-verify", "Verify the host's audit log"),
        (mirror_status, "mirror-status", "Mirror store status"),
        (policy_check, "policy-check", "Policy dry run"),
        (explain_exit_code, "exit-code", "Explain an exit code"),
    ]


def need_path(path: Path | None) -> Path:
    if path is None:  # a required argument: the SDK has checked it is there
        raise UsageError("a path is required")
    return path


def host_paths(opts: McpOptions, prefix: str | None, state_dir: str | None) -> tuple[Path, Path | None]:
    return need_path(opts.path(prefix, opts.prefix, "prefix")), opts.path(state_dir, opts.state_dir, "state_dir")
