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
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chiron import __version__
from chiron.core.runtime import self_archive
from chiron.errors import ChironError, ExitCode, VerificationError

if TYPE_CHECKING:
    pass

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

state: dict[str, Any] = {"verbose": False, "json": False, "log_format": "human"}

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
    state["log_format"] = log_format
    state["verbose"] = verbose
    if trace_file is not None or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("CHIRON_TRACE_FILE"):
        from chiron.core import telemetry as _telemetry

        _telemetry.configure(trace_file)


def log(level: str, message: str, **fields: Any) -> None:
    """A message for the operator on stderr: a plain line, or one JSON object with --log-format json."""
    if state["log_format"] == "json":
        from datetime import UTC, datetime

        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = {"time": when, "level": level, "message": message, **fields}
        sys.stderr.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        return
    prefix = {"error": "chiron: error: ", "notice": "notice: ", "warning": "warning: "}.get(level, "")
    typer.echo(prefix + message, err=True)


def emit(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def archive_arg(path: Path | None, command: str) -> Path:
    if path is not None:
        return path
    me = self_archive()
    if me is None:
        from chiron.errors import UsageError

        raise UsageError(f"{command}: give the appliance to check (chiron {command} PATH), or run it from one")
    return me


PrefixOpt = Annotated[Path, typer.Option("--prefix", help="Where releases live (bin/, current, releases/).")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="Host state (default: PREFIX/state).")]
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for another operation's lock.")]
InstallerOpt = Annotated[str, typer.Option("--installer", help="auto (uv if present, else pip), uv or pip.")]
ImagesOpt = Annotated[str, typer.Option("--images", help="load (into the Docker Engine), push (--registry) or skip.")]
RegistryOpt = Annotated[str | None, typer.Option("--registry", help="Enclave registry HOST[:PORT] for --images push.")]


StoreOpt = Annotated[Path, typer.Option("--store", help="The mirror store directory.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="CHIRON_TOKEN", help="Token for a chiron serve ($CHIRON_TOKEN; or in the URL)."),
]
CaOpt = Annotated[Path | None, typer.Option("--cacert", help="CA certificates for the server's TLS (PEM).")]


def client(token: str | None, cacert: Path | None) -> Any:
    """How to talk to a chiron serve: the token and the CA to trust."""
    from chiron.sources.http import Client

    return Client(token=token, cafile=cacert)


def register_commands() -> None:
    """Import the command modules; each registers its commands with ``app`` (in --help order)."""
    from chiron.cli import archive, host, keys, mirror, pull, serve  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, print ChironErrors as one line, exit with the documented code."""
    register_commands()
    args = sys.argv[1:] if argv is None else argv
    # Known before parsing, so that errors from global options and every command honour --json.
    state.update(verbose=False, json="--json" in args, log_format="human")
    try:
        code = app(args=args, standalone_mode=False, prog_name="chiron")
    except ChironError as exc:
        if state["verbose"]:
            traceback.print_exc()
        if state["json"]:
            error: dict[str, Any] = {
                "schema": "chiron.error/1",
                "error": exc.diagnostics(),
                "exit_code": int(exc.exit_code),
            }
            if isinstance(exc, VerificationError):
                error["problems"] = exc.problems
            if getattr(exc, "details", None):
                error["details"] = exc.details  # type: ignore[attr-defined]
            emit(error)
        log("error", exc.diagnostics(), exit_code=int(exc.exit_code))
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
        if state["verbose"]:
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        log("error", f"{where.strip() + ': ' if where else ''}{exc.strerror or exc}", exit_code=3)
        code = ExitCode.ENVIRONMENT
    except Exception as exc:  # a bug: never let it look like a verification result (exit 1)
        traceback.print_exc()
        typer.echo(f"chiron: internal error: {type(exc).__name__}: {exc} (please report this)", err=True)
        code = ExitCode.ENVIRONMENT
    finally:
        if "chiron.core.telemetry" in sys.modules:
            sys.modules["chiron.core.telemetry"].shutdown()
    sys.exit(int(code or 0))


def tool_wheels_dir(given: Path | None) -> Path:
    from chiron.errors import UsageError

    wheels = given or (Path(os.environ["CHIRON_TOOL_WHEELS"]) if os.environ.get("CHIRON_TOOL_WHEELS") else None)
    if wheels is None:
        raise UsageError("no --tool-wheels given", hint="pass the directory holding chiron's own wheels")
    return wheels
