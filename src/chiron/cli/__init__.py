"""Command-line wiring (typer) only: parse options, call an engine, print, map errors to exit codes.

Heavy modules (tuf, pydantic models, rich, OpenTelemetry) are imported inside the commands so that
``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from chiron import __version__
from chiron.core.fs import write_atomic
from chiron.errors import ChironError, ExitCode, VerificationError

if TYPE_CHECKING:
    from chiron.sources.tool import ToolFormat

app = typer.Typer(
    name="chiron",
    help="Ship Python wheelhouses (and images) into air-gapped networks as ONE self-verifying archive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
keys_app = typer.Typer(
    help="Signing keys: development keys, root ceremonies (new-root, status) and rotation.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(help="The host's hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
mirror_app = typer.Typer(
    help="The mirror store on the connected host: refresh it on a schedule, restore it from an appliance.",
    no_args_is_help=True,
)
app.add_typer(mirror_app, name="mirror")

_state: dict[str, Any] = {"verbose": False, "json": False, "log_format": "human"}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON report on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chiron {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks of errors.")] = False,
    log_format: Annotated[
        str, typer.Option("--log-format", help="Messages on stderr: human (default) or json (one object per line).")
    ] = "human",
    trace_file: Annotated[
        Path | None, typer.Option(help="Write OpenTelemetry spans and metrics as JSON lines to this file.")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options."""
    from chiron.errors import UsageError

    if log_format not in ("human", "json"):
        raise UsageError(f"--log-format: '{log_format}' is not human or json")
    _state["log_format"] = log_format
    _state["verbose"] = verbose
    if trace_file is not None or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("CHIRON_TRACE_FILE"):
        from chiron.core import telemetry as _telemetry

        _telemetry.configure(trace_file)


def _log(level: str, message: str, **fields: Any) -> None:
    """A message for the operator on stderr: a plain line, or one JSON object with --log-format json."""
    if _state["log_format"] == "json":
        from datetime import UTC, datetime

        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = {"time": when, "level": level, "message": message, **fields}
        sys.stderr.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        return
    prefix = {"error": "chiron: error: ", "notice": "notice: ", "warning": "warning: "}.get(level, "")
    typer.echo(prefix + message, err=True)


def _emit(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def self_archive() -> Path | None:
    """The appliance this process runs from, if any (pex sets PEX; shiv runs with argv[0] the file)."""
    pex = os.environ.get("PEX")
    if pex and Path(pex).is_file():
        return Path(pex).resolve()
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.is_file() and _is_zip(argv0):
        return argv0.resolve()
    return None


def _is_zip(path: Path) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _archive_arg(path: Path | None, command: str) -> Path:
    if path is not None:
        return path
    me = self_archive()
    if me is None:
        from chiron.errors import UsageError

        raise UsageError(f"{command}: give the appliance to check (chiron {command} PATH), or run it from one")
    return me


@app.command()
def verify(
    path: Annotated[Path | None, typer.Argument(help="Appliance to verify; default: the one running.")] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Trusted root metadata (JSON) obtained out of band.")
    ] = None,
    root_sha256: Annotated[
        str | None, typer.Option("--root-sha256", help="sha256 of a trusted root metadata file.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify every byte of an appliance against its TUF metadata. Exit 0 verified, 1 failed."""
    from chiron.engines.verify import verify as run_verify

    target = _archive_arg(path, "verify")
    report = run_verify(target, root_file=root, root_sha256=root_sha256, show_progress=not as_json)
    if as_json:
        _emit(report.as_dict())
    else:
        for notice in report.notices:
            _log("notice", notice)
        if report.ok:
            typer.echo(
                f"verified {target}: {report.name} {report.version}, {report.targets} signed targets, "
                f"{report.bytes_hashed} bytes hashed, every byte accounted for (anchor: {report.trust_anchor})"
            )
        else:
            if _state["log_format"] == "json":
                for p in report.problems:
                    _log("error", p, path=str(target))
            else:
                typer.echo(f"chiron: verification FAILED for {target}", err=True)
                for p in report.problems:
                    typer.echo(f"  - {p}", err=True)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.VERIFY_FAILED)


@app.command()
def inspect(
    path: Annotated[Path | None, typer.Argument(help="Appliance to describe; default: the one running.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe an appliance: packages, platforms, targets, TUF roles (does not verify)."""
    from chiron.engines.inspect import inspect_archive, render

    info = inspect_archive(_archive_arg(path, "inspect"))
    if as_json:
        _emit(info)
    else:
        typer.echo(render(info))


@app.command()
def build(
    spec: Annotated[Path, typer.Argument(help="The appliance spec (appliance.toml).")] = Path("bundle/appliance.toml"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the appliance.")] = Path(
        "dist/chiron.pex"
    ),
    fmt: Annotated[str, typer.Option("--format", help="Tool zip format: pex or shiv.")] = "pex",
    tool_wheels: Annotated[
        Path | None,
        typer.Option(help="Wheels of chiron and its dependencies (default: $CHIRON_TOOL_WHEELS)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Artifact cache (default: $CHIRON_CACHE_DIR, else $XDG_CACHE_HOME/chiron, else ~/.cache/chiron)."
        ),
    ] = None,
    source_date_epoch: Annotated[
        int | None, typer.Option(help="Build time in seconds since 1970 (default: $SOURCE_DATE_EPOCH).")
    ] = None,
    metadata_version: Annotated[
        int | None,
        typer.Option(min=1, help="Version of targets/snapshot/timestamp (default: the build time in seconds)."),
    ] = None,
    shebang: Annotated[str, typer.Option(help="Interpreter line of the appliance.")] = "/usr/bin/env python3",
    as_json: JsonOpt = False,
) -> None:
    """Build a signed appliance from a spec."""
    from chiron.engines.build import BuildOptions
    from chiron.engines.build import build as run_build
    from chiron.errors import UsageError
    from chiron.sources.cache import default_cache_dir

    if fmt not in ("pex", "shiv"):
        raise UsageError(f"--format: '{fmt}' is not pex or shiv")
    opts = BuildOptions(
        spec=spec,
        output=output,
        tool_wheels=_tool_wheels(tool_wheels),
        cache_dir=cache_dir or default_cache_dir(),
        tool_format=cast("ToolFormat", fmt),
        source_date_epoch=source_date_epoch,
        metadata_version=metadata_version,
        shebang=shebang,
        show_progress=not as_json,
    )
    result = run_build(opts)
    for note in result.notes:
        _log("notice", note)
    if as_json:
        _emit({"schema": "chiron.build/1", **result.as_dict()})
    else:
        typer.echo(
            f"built {result.output} ({result.name} {result.version}, {result.size} bytes, {result.targets} targets, "
            f"{result.wheels} wheels: {result.downloaded} downloaded, {result.reused} from cache)"
        )
        typer.echo(f"detached signature: {result.signature}")
        typer.echo(f"root fingerprint: {result.root_fingerprint}")


@app.command()
def rebuild(
    archive: Annotated[Path, typer.Argument(help="The appliance to rebuild from what it carries.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the rebuild.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 0 only if byte-identical; else 1 with causes.")] = False,
    online: Annotated[
        bool, typer.Option("--online", help="Fetch wheels from the lock's URLs, not the archive.")
    ] = False,
    base: Annotated[
        Path, typer.Option("--base", help="Folder the spec's relative key paths resolve against (e.g. bundle).")
    ] = Path("."),
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the archive first.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Artifact cache for --online.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild an appliance from its own spec, lock, wheels and tool code, and compare member by member."""
    from chiron.engines.rebuild import rebuild as run_rebuild
    from chiron.sources.cache import default_cache_dir

    out = output or archive.with_name(archive.name + ".rebuilt")
    result = run_rebuild(
        archive,
        out,
        base=base,
        tool_wheels=None,
        cache_dir=cache_dir or default_cache_dir(),
        online=online,
        root_file=root,
        root_sha256=root_sha256,
    )
    if as_json:
        _emit(result.as_dict())
    elif result.identical:
        typer.echo(f"rebuilt {out}: byte-identical to {archive}")
    else:
        typer.echo(f"rebuilt {out}: DIFFERS from {archive}")
        for d in result.differences[:10]:
            typer.echo(f"  - {d['member']}: {d['cause']}")
    raise typer.Exit(ExitCode.VERIFY_FAILED if check and not result.identical else ExitCode.OK)


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The older appliance.")],
    new: Annotated[Path, typer.Argument(help="The newer appliance.")],
    as_json: JsonOpt = False,
) -> None:
    """What changed: packages added, removed, upgraded (versions, sizes, licences) and images."""
    from chiron.engines.diff import diff as run_diff
    from chiron.engines.diff import render

    result = run_diff(old, new)
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else render(result))


@app.command()
def lock(
    spec: Annotated[Path, typer.Argument(help="The appliance spec.")] = Path("bundle/appliance.toml"),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Lock file (default: the spec's python.lock).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Resolve the spec's requirements for every environment; write pylock.toml and requirements files."""
    from chiron.core.spec import load_spec
    from chiron.errors import UsageError
    from chiron.sources import lock as _lock
    from chiron.sources.cache import ArtifactCache, default_cache_dir

    loaded = load_spec(spec)
    out = output or loaded.lock_path
    if out is None:
        raise UsageError(f"{spec}: python.lock is not set; pass --output PATH")
    result = _lock.resolve(loaded.spec, loaded.base)
    cache = ArtifactCache(default_cache_dir())
    measured = {}
    for art in result.artifacts():
        _p, sha, size = cache.fetch(art.url, art.sha256, art.filename)
        measured[art.filename] = (sha, size)
    _lock.fill_hashes(result, measured)
    write_atomic(out, _lock.write_pylock(result, loaded.spec))
    written = [str(out)]
    for env in loaded.spec.environments:
        req = out.with_name(f"requirements-{env.name}.txt")
        write_atomic(req, _lock.requirements_txt(result, env.name))
        written.append(str(req))
    if as_json:
        _emit({"schema": "chiron.lock/1", "written": written, "packages": len(result.packages)})
    else:
        typer.echo(f"locked {len(result.packages)} packages for {len(loaded.spec.environments)} environment(s)")
        for w in written:
            typer.echo(f"  wrote {w}")


PrefixOpt = Annotated[Path, typer.Option("--prefix", help="Where releases live (bin/, current, releases/).")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="Host state (default: PREFIX/state).")]
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for another operation's lock.")]
InstallerOpt = Annotated[str, typer.Option("--installer", help="auto (uv if present, else pip), uv or pip.")]
ImagesOpt = Annotated[str, typer.Option("--images", help="load (into the Docker Engine), push (--registry) or skip.")]
RegistryOpt = Annotated[str | None, typer.Option("--registry", help="Enclave registry HOST[:PORT] for --images push.")]


def _host_opts(archive: Path | None, command: str, prefix: Path, **kw: Any) -> Any:
    from chiron.engines.host import InstallOptions
    from chiron.errors import UsageError

    if kw.get("installer") not in ("auto", "uv", "pip"):
        raise UsageError(f"--installer: '{kw.get('installer')}' is not auto, uv or pip")
    if kw.get("images", "load") not in ("load", "push", "skip"):
        raise UsageError(f"--images: '{kw.get('images')}' is not load, push or skip")
    if (kw.get("images") == "push") != bool(kw.get("registry")):
        raise UsageError("--images push and --registry HOST[:PORT][/PREFIX] go together")
    return InstallOptions(archive=_archive_arg(archive, command).absolute(), prefix=prefix, **kw)


def _print_host_result(result: Any, as_json: bool) -> None:
    if as_json:
        _emit(result.as_dict())
        return
    for notice in result.notices:
        _log("notice", notice)
    if not result.changed:
        typer.echo(f"already installed: {result.name} {result.version} is the live release {result.release}")
        return
    verb = {"install": "installed", "upgrade": "upgraded to", "rollback": "rolled back to"}[result.op]
    typer.echo(f"{verb} {result.name} {result.version} (release {result.release}, environment {result.environment})")
    if result.previous:
        typer.echo(f"previous release kept: {result.previous}")


@app.command()
def install(
    archive: Annotated[Path | None, typer.Argument(help="Appliance to install; default: the one running.")] = None,
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root metadata obtained out of band.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of the trusted root.")] = None,
    installer: InstallerOpt = "auto",
    images: ImagesOpt = "load",
    registry: RegistryOpt = None,
    wait: WaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """First install on a host: verify, then create the release offline and switch to it."""
    from chiron.engines.host import install as run_install

    opts = _host_opts(
        archive,
        "install",
        prefix,
        state_dir=state_dir,
        root_file=root,
        root_sha256=root_sha256,
        installer=installer,
        images=images,
        registry=registry,
        wait=wait,
        show_progress=not as_json,
    )
    _print_host_result(run_install(opts), as_json)


@app.command()
def upgrade(
    archive: Annotated[Path | None, typer.Argument(help="The newer appliance; default: the one running.")] = None,
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    allow_downgrade: Annotated[
        bool, typer.Option("--allow-downgrade", help="Install an older release deliberately (logged).")
    ] = False,
    installer: InstallerOpt = "auto",
    images: ImagesOpt = "load",
    registry: RegistryOpt = None,
    wait: WaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Verify against the host's trusted metadata, install beside the current release, health-check, switch."""
    from chiron.engines.host import upgrade as run_upgrade

    target = _archive_arg(archive, "upgrade").absolute()
    _hand_over_to_installed(prefix, target, state_dir, allow_downgrade, installer, wait, as_json, images, registry)
    opts = _host_opts(
        archive,
        "upgrade",
        prefix,
        state_dir=state_dir,
        allow_downgrade=allow_downgrade,
        installer=installer,
        images=images,
        registry=registry,
        wait=wait,
        show_progress=not as_json,
    )
    _print_host_result(run_upgrade(opts), as_json)


def _hand_over_to_installed(
    prefix: Path,
    archive: Path,
    state_dir: Path | None,
    allow_downgrade: bool,
    installer: str,
    wait: float,
    js: bool,
    images: str = "load",
    registry: str | None = None,
) -> None:
    """Run the upgrade with the INSTALLED tool when invoked from another archive (``./new.pex upgrade``):
    a new archive's own code must not be what decides to trust it."""
    me, installed = self_archive(), prefix / "bin" / "chiron"
    if me is None or not installed.exists() or me == installed.resolve() or os.environ.get("CHIRON_HANDED_OVER"):
        return
    _log("notice", f"handing over to the installed tool {installed} (the new archive does not verify itself)")
    argv = [
        str(installed),
        "upgrade",
        str(archive),
        "--prefix",
        str(prefix),
        "--installer",
        installer,
        "--wait",
        str(wait),
    ]
    argv += ["--state-dir", str(state_dir)] if state_dir else []
    argv += ["--allow-downgrade"] if allow_downgrade else []
    argv += ["--images", images] + (["--registry", registry] if registry else [])
    argv += ["--json"] if js else []
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(installed, argv, {**os.environ, "CHIRON_HANDED_OVER": "1"})  # noqa: S606 - argv, no shell


@app.command()
def recover(
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    wait: WaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Finish or undo an interrupted install/upgrade, and nothing else."""
    from chiron.engines.host import recover_only

    outcome = recover_only(prefix, state_dir, wait)
    if as_json:
        _emit({"schema": "chiron.recover/1", "prefix": str(prefix), "outcome": outcome})
    else:
        typer.echo(outcome or "nothing to recover")


@app.command()
def rollback(
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    wait: WaitOpt = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Switch back to the previous release (logged)."""
    from chiron.engines.host import rollback as run_rollback

    _print_host_result(run_rollback(prefix, state_dir, wait), as_json)


@app.command()
def status(
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Releases, the current one, trusted metadata versions and expiry, last operations."""
    from chiron.engines.host import status as run_status

    info = run_status(prefix, state_dir)
    if as_json:
        _emit(info)
        return
    cur = info["current"]
    typer.echo(f"prefix {info['prefix']} (state {info['state_dir']})")
    if cur:
        typer.echo(f"current: {cur['name']} {cur['version']} (release {cur['release']}, installed {cur['installed']})")
    typer.echo(f"previous: {info['previous'] or '-'}")
    for role, m in info["metadata"].items():
        typer.echo(f"trusted {role:<10} v{m['version']:<12} expires {m['expires']}")
    if info["pending_transaction"]:
        typer.echo(f"pending transaction: {info['pending_transaction']['op']} {info['pending_transaction']['id']}")
    for w in info["warnings"]:
        typer.echo(f"warning: {w}")
    typer.echo("last operations:")
    for op in info["last_operations"]:
        typer.echo(f"  {op['time']} {op['user']:<8} {op['op']:<9} {op['result']:<8} {op.get('release') or ''}")


@app.command()
def doctor(
    archive: Annotated[
        Path | None, typer.Argument(help="The appliance to prepare for; default: the one running.")
    ] = None,
    prefix: Annotated[Path | None, typer.Option("--prefix", help="Where it will be installed.")] = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this host can do the next operation; print what is missing and the fix. Exit 0 ready, 3 not."""
    from chiron.engines.doctor import doctor as run_doctor

    checks = run_doctor(archive or self_archive(), prefix, state_dir)
    failed = [c for c in checks if not c.ok and c.severity == "error"]
    if as_json:
        _emit({"schema": "chiron.doctor/1", "ok": not failed, "checks": [c.as_dict() for c in checks]})
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.severity == "error" else "warn")
            typer.echo(f"{mark} {c.name:<18} {c.detail}" + (f"\n     fix: {c.fix}" if not c.ok and c.fix else ""))
        typer.echo("ready" if not failed else f"not ready: {len(failed)} problem(s)")
    raise typer.Exit(ExitCode.OK if not failed else ExitCode.ENVIRONMENT)


@audit_app.command("verify")
def audit_verify(
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that no audit entry was edited, inserted or removed. Exit 0 intact, 1 tampered."""
    from chiron.core import audit as _audit
    from chiron.engines.host import Paths

    report = _audit.verify_log(Paths.make(prefix, state_dir).audit)
    if as_json:
        _emit(report.as_dict())
    else:
        for n in report.notices:
            _log("notice", n)
        if report.ok:
            typer.echo(f"audit log intact: {report.entries} entries, chain and head agree ({report.path})")
        else:
            typer.echo(f"chiron: audit log TAMPERED or damaged: {report.path}", err=True)
            for problem in report.problems:
                typer.echo(f"  - {problem}", err=True)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.VERIFY_FAILED)


def _role_pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    from chiron.errors import UsageError

    out = []
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or role not in ("root", "targets", "snapshot", "timestamp") or not value:
            raise UsageError(f"{what}: '{item}' is not ROLE=VALUE with ROLE one of root, targets, snapshot, timestamp")
        out.append((role, value))
    return out


def _print_status(path: Path, status: Any, as_json: bool) -> None:
    if as_json:
        _emit(
            {
                "schema": "chiron.root-status/1",
                "file": str(path),
                "version": status.version,
                "complete": status.complete,
                "thresholds": {k: {"signed": v[0], "threshold": v[1]} for k, v in status.thresholds.items()},
                "missing": status.missing,
            }
        )
        return
    typer.echo(f"{path}: root v{status.version}: {status.describe()}")
    typer.echo("complete: ready to publish" if status.complete else "NOT complete: more signatures are needed")


@app.command()
def sign(
    file: Annotated[Path, typer.Argument(help="A pending N.root.json (carried on removable media).")],
    key: Annotated[str, typer.Option("--key", help="Private-key URI of the signer (file2:, hsm:, secret:, ...).")],
    keyid: Annotated[str | None, typer.Option(help="Which root key this is (for remote backends).")] = None,
    secret_env: Annotated[str | None, typer.Option(help="Variable holding the passphrase or PIN.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add ONE signature to a pending root metadata file (offline ceremony step)."""
    from chiron.trust.ceremony import sign_file

    status = sign_file(file, key, keyid, secret_env)
    assert status is not None
    _print_status(file, status, as_json)


@keys_app.command("status")
def keys_status(
    file: Annotated[Path, typer.Argument(help="An N.root.json (N-1.root.json must be beside it for N > 1).")],
    as_json: JsonOpt = False,
) -> None:
    """Who has signed a root file and who is missing. Exit 0 complete, 1 threshold not met."""
    from chiron.trust.ceremony import previous_root
    from chiron.trust.metadata import parse_root, signature_status

    try:
        data = file.read_bytes()
    except OSError as exc:
        from chiron.errors import UsageError

        raise UsageError(f"{file}: cannot read: {exc.strerror}") from None
    md = parse_root(data, str(file))
    status = signature_status(md, previous_root(file, md.signed.version))
    _print_status(file, status, as_json)
    raise typer.Exit(ExitCode.OK if status.complete else ExitCode.VERIFY_FAILED)


@keys_app.command("new-root")
def keys_new_root(
    directory: Annotated[Path, typer.Argument(help="Root directory (N.root.json files); v1 if empty.")],
    key: Annotated[list[str], typer.Option("--key", help="ROLE=PUBLIC_KEY_FILE (PEM or TUF key JSON); repeat.")],
    threshold: Annotated[list[str], typer.Option("--threshold", help="ROLE=N (default 1).")] = [],  # noqa: B006
    expires: Annotated[str, typer.Option(help="Validity, e.g. 365d.")] = "365d",
) -> None:
    """Write an UNSIGNED root for a signing ceremony; then each holder runs 'chiron sign'."""
    from datetime import UTC, datetime, timedelta

    from chiron.core.models import parse_duration
    from chiron.trust.ceremony import key_from_file, new_root

    role_keys: dict[str, list[Any]] = {r: [] for r in ("root", "targets", "snapshot", "timestamp")}
    for role, value in _role_pairs(key, "--key"):
        role_keys[role].append(key_from_file(Path(value)))
    empty = [r for r, ks in role_keys.items() if not ks]
    if empty:
        from chiron.errors import UsageError

        raise UsageError(f"--key: no key given for role(s) {', '.join(empty)}")
    thresholds = {role: int(value) for role, value in _role_pairs(threshold, "--threshold")}
    out = new_root(directory, role_keys, thresholds, timedelta(seconds=parse_duration(expires)), datetime.now(UTC))
    typer.echo(f"wrote unsigned {out}; sign it with: chiron sign {out} --key URI (each root key holder)")


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="The role whose keys change: root, targets, snapshot or timestamp.")],
    root_dir: Annotated[Path, typer.Option("--root-dir", help="Directory of N.root.json files.")],
    add: Annotated[list[Path], typer.Option("--add", help="Public key file to add; repeat.")] = [],  # noqa: B006
    revoke: Annotated[list[str], typer.Option("--revoke", help="Keyid to remove; repeat.")] = [],  # noqa: B006
    threshold: Annotated[int | None, typer.Option(help="New threshold for the role.")] = None,
    expires: Annotated[str, typer.Option(help="Validity of the new root, e.g. 365d.")] = "365d",
) -> None:
    """Write root N+1 with ROLE's keys changed; it needs signatures of the old AND new root thresholds."""
    from datetime import UTC, datetime, timedelta

    from chiron.core.models import parse_duration
    from chiron.trust.ceremony import key_from_file, rotate

    keys = [key_from_file(p) for p in add]
    out = rotate(root_dir, role, keys, revoke, threshold, timedelta(seconds=parse_duration(expires)), datetime.now(UTC))
    typer.echo(
        f"wrote unsigned {out}: it needs the root threshold of the previous AND of this root; "
        f"sign with: chiron sign {out} --key URI"
    )


@keys_app.command("init")
def keys_init(
    directory: Annotated[Path, typer.Argument(help="Where to write the keys (created, mode 0700).")],
    root_expires: Annotated[str, typer.Option(help="Validity of root v1, e.g. 365d.")] = "365d",
    force: Annotated[bool, typer.Option(help="Replace keys already in DIR.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a THROW-AWAY development key set: Ed25519 PEM per role (0600) and a signed 1.root.json."""
    from datetime import UTC, datetime, timedelta

    from chiron.core.models import parse_duration
    from chiron.errors import UsageError
    from chiron.trust.devkeys import init_dev_keys

    try:
        seconds = parse_duration(root_expires)
    except ValueError as exc:
        raise UsageError(f"--root-expires: {exc}") from None
    made = init_dev_keys(directory, root_expires=timedelta(seconds=seconds), now=datetime.now(UTC), force=force)
    if as_json:
        _emit(
            {
                "schema": "chiron.keys-init/1",
                "directory": str(made.directory),
                "root": str(made.root_path),
                "root_fingerprint": made.fingerprint,
                "keyids": made.keyids,
            }
        )
        return
    typer.echo(f"wrote development keys to {made.directory} (private keys: mode 0600, never packed)")
    for role, keyid in made.keyids.items():
        typer.echo(f"  {role:<10} {keyid}")
    typer.echo(f"root metadata: {made.root_path}")
    typer.echo(f"root fingerprint: {made.fingerprint}")
    typer.echo("These keys are for development only: use HSM/KMS keys and a signing ceremony in production.")


StoreOpt = Annotated[Path, typer.Option("--store", help="The mirror store directory.")]


def _tool_wheels(given: Path | None) -> Path:
    from chiron.errors import UsageError

    wheels = given or (Path(os.environ["CHIRON_TOOL_WHEELS"]) if os.environ.get("CHIRON_TOOL_WHEELS") else None)
    if wheels is None:
        raise UsageError("no --tool-wheels given", hint="pass the directory holding chiron's own wheels")
    return wheels


@mirror_app.command("refresh")
def mirror_refresh(
    spec: Annotated[
        Path | None, typer.Argument(help="The appliance spec (default: the one the store was last refreshed from).")
    ] = None,
    store: StoreOpt = Path("mirror"),
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy file (default: policy.toml beside the spec, if any).")
    ] = None,
    delta_from: Annotated[
        Path | None,
        typer.Option("--delta-from", help="Also write a delta against this older appliance or host inventory."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Build and sign a new version even if nothing changed.")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="Tool zip format: pex or shiv.")] = "pex",
    tool_wheels: Annotated[
        Path | None, typer.Option(help="Wheels of chiron and its dependencies (default: $CHIRON_TOOL_WHEELS).")
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", help="Folder the spec's relative paths resolve against.")
    ] = None,
    source_date_epoch: Annotated[
        int | None, typer.Option(help="Build time in seconds since 1970 (default: $SOURCE_DATE_EPOCH).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-resolve the spec, fetch only what the store lacks, apply the policy, sign version N+1 if anything
    changed. Exit 0 built or up to date, 4 policy violation, 3 upstream or disk problem."""
    from chiron.engines.diff import render
    from chiron.engines.mirror import RefreshOptions, refresh
    from chiron.errors import UsageError

    if fmt not in ("pex", "shiv"):
        raise UsageError(f"--format: '{fmt}' is not pex or shiv")
    result = refresh(
        RefreshOptions(
            store=store,
            spec=spec,
            tool_wheels=_tool_wheels(tool_wheels),
            base_dir=base,
            tool_format=cast("ToolFormat", fmt),
            policy=policy,
            delta_from=delta_from,
            force=force,
            source_date_epoch=source_date_epoch,
            show_progress=not as_json,
        )
    )
    if as_json:
        _emit(result.as_dict())
        return
    for note in result.notes if result.changed else ():
        _log("notice", note)
    if not result.changed:
        typer.echo(
            f"up to date: nothing new upstream ({result.downloaded} artifacts downloaded); "
            f"{result.name} {result.version} metadata version {result.metadata_version} stays the newest: "
            f"{result.appliance}"
        )
        return
    typer.echo(
        f"built {result.appliance} ({result.name} {result.version}, metadata version {result.metadata_version}, "
        f"{result.size} bytes; {result.downloaded} artifacts downloaded, {result.bytes_downloaded} bytes, "
        f"{result.reused} from the store)"
    )
    if result.delta:
        typer.echo(f"delta: {result.delta} ({result.delta_size} bytes)")
    if result.changelog:
        typer.echo(render(result.changelog))


@mirror_app.command("restore")
def mirror_restore(
    archive: Annotated[Path, typer.Argument(help="The latest appliance (it carries the store's content).")],
    store: StoreOpt = Path("mirror"),
    spec: Annotated[
        Path | None, typer.Option("--spec", help="The spec to refresh from (default: the copy the appliance carries).")
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", help="Folder the spec's relative key paths resolve against.")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the appliance.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild a mirror store from a verified appliance; the next refresh signs version N+1 with the same keys."""
    from chiron.engines.mirror import restore

    info = restore(archive, store, spec=spec, base=base, root_file=root, root_sha256=root_sha256)
    if as_json:
        _emit(info)
        return
    for notice in info["notices"]:
        _log("notice", notice)
    typer.echo(
        f"restored {info['store']} from {archive}: {info['name']} {info['version']} metadata version "
        f"{info['metadata_version']} ({info['wheels']} wheels, {info['image_blobs']} image blobs); "
        f"the next refresh signs version {info['next_version']} with spec {info['spec']}"
    )
    for role, uris in sorted(info["keys"].items()):
        typer.echo(f"  {role}: {', '.join(uris)}")


@mirror_app.command("status")
def mirror_status(store: StoreOpt = Path("mirror"), as_json: JsonOpt = False) -> None:
    """What a store holds: versions built, the latest appliance, artifacts on disk."""
    from chiron.engines.mirror import status as run_status

    info = run_status(store)
    if as_json:
        _emit(info)
        return
    latest = info["latest"]
    typer.echo(f"store {info['store']}: {info['name']} (spec {info['spec']})")
    typer.echo(f"latest: metadata version {latest['metadata_version']}, {latest['version']}, {latest['file']}")
    typer.echo(f"versions: {', '.join(str(v) for v in info['versions'])}")
    typer.echo(
        f"artifacts: {info['artifacts']} ({info['artifact_bytes']} bytes); "
        f"image blobs: {info['image_blobs']} ({info['image_bytes']} bytes)"
    )


@mirror_app.command("prune")
def mirror_prune(
    store: StoreOpt = Path("mirror"),
    keep: Annotated[int, typer.Option("--keep", help="How many of the newest appliances to keep.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Remove older appliances and the artifacts and image blobs only they used (the lock history stays)."""
    from chiron.engines.mirror import prune

    info = prune(store, keep)
    if as_json:
        _emit(info)
        return
    typer.echo(
        f"pruned {len(info['pruned'])} version(s) from {info['store']}; kept {', '.join(map(str, info['kept']))}; "
        f"{info['files_removed']} artifacts and blobs removed, {info['bytes_freed']} bytes freed"
    )


@app.command("delta")
def make_delta(
    base: Annotated[Path, typer.Argument(help="What the host already has: an older appliance or an inventory.")],
    new: Annotated[Path, typer.Argument(help="The new appliance.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the delta.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a delta holding only what BASE lacks; the host's `upgrade` rebuilds NEW from it and verifies it."""
    from chiron.archive.delta import make

    out = output or new.with_suffix(".delta")
    made = make(base, new, out)
    if as_json:
        _emit(
            {
                "schema": "chiron.delta/1",
                "output": str(made.path),
                "size": made.size,
                "carried_bytes": made.carried,
                "reused_bytes": made.reused,
            }
        )
    else:
        typer.echo(f"wrote {made.path}: {made.size} bytes ({made.carried} carried, {made.reused} from the base)")


@app.command()
def inventory(
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the inventory to this file.")] = None,
) -> None:
    """List what this host holds (by sha256), for a mirror to make a delta that fits it."""
    from chiron.archive.delta import write_inventory
    from chiron.engines.host import inventory as run_inventory

    info = run_inventory(prefix, state_dir)
    if output is None:
        _emit(info)
    else:
        write_inventory(info, output)
        typer.echo(f"wrote {output}: {len(info['content'])} pieces from {len(info['releases'])} release(s)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, print ChironErrors as one line, exit with the documented code."""
    args = sys.argv[1:] if argv is None else argv
    # Known before parsing, so that errors from global options and every command honour --json.
    _state.update(verbose=False, json="--json" in args, log_format="human")
    try:
        code = app(args=args, standalone_mode=False, prog_name="chiron")
    except ChironError as exc:
        if _state["verbose"]:
            traceback.print_exc()
        if _state["json"]:
            error: dict[str, Any] = {
                "schema": "chiron.error/1",
                "error": exc.diagnostics(),
                "exit_code": int(exc.exit_code),
            }
            if isinstance(exc, VerificationError):
                error["problems"] = exc.problems
            if getattr(exc, "details", None):
                error["details"] = exc.details  # type: ignore[attr-defined]
            _emit(error)
        _log("error", exc.diagnostics(), exit_code=int(exc.exit_code))
        code = int(exc.exit_code)
    except typer.Abort:
        typer.echo("chiron: interrupted", err=True)
        code = 130
    except typer.TyperException as exc:  # bad usage: unknown option, missing argument, bad value
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"chiron: error: {exc}", err=True)
        code = ExitCode.USAGE
    except KeyboardInterrupt:
        typer.echo("chiron: interrupted", err=True)
        code = 130
    except OSError as exc:
        # An I/O problem outside chiron's checks (permissions, disk, a vanished file): environment.
        if _state["verbose"]:
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        _log("error", f"{where.strip() + ': ' if where else ''}{exc.strerror or exc}", exit_code=3)
        code = ExitCode.ENVIRONMENT
    except Exception as exc:  # a bug: never let it look like a verification result (exit 1)
        traceback.print_exc()
        typer.echo(f"chiron: internal error: {type(exc).__name__}: {exc} (please report this)", err=True)
        code = ExitCode.ENVIRONMENT
    finally:
        if "chiron.core.telemetry" in sys.modules:
            sys.modules["chiron.core.telemetry"].shutdown()
    sys.exit(int(code or 0))
