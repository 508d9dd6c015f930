"""The entry point: register the command modules, run the CLI, map errors to exit codes.

Apart from ``chiron.cli.app`` (the typer application and the helpers every command module shares), so
that the command modules import ``app`` and this module imports them, with no cycle between the two.
"""

import sys
import traceback
from typing import Any

import typer

from chiron.cli.app import FRESH_STATE, app, emit, log, say, state
from chiron.cli.argv import place_options
from chiron.cli.coercion import use_plain_coercion
from chiron.cli.oserror import describe_os_error
from chiron.errors import ChironError, ExitCode, VerificationError


def register_commands() -> None:
    """Import the command modules; each registers its commands with ``app`` (in --help order)."""
    from chiron.cli import archive, config, download, host, images, keys, mcp, media, mirror, oci, report, serve  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, print ChironErrors as one line, exit with the documented code."""
    register_commands()
    args = list(sys.argv[1:] if argv is None else argv)
    state.update({k: (list(v) if isinstance(v, list) else v) for k, v in FRESH_STATE.items()})
    try:
        root = typer.main.get_command(app)
        use_plain_coercion(root)  # no pydantic for str and Path values (start-up time)
        # Global options are accepted anywhere (a systemd unit puts them last); --json is known
        # before parsing, so that errors from global options and every command honour it.
        placed = place_options(root, args)
        state.update(json=placed.json, global_args=placed.global_args, command=placed.command)
        code = root.main(args=placed.args, standalone_mode=False, prog_name="chiron")
    except ChironError as exc:
        code = _report(exc)
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
        # An I/O problem outside chiron's checks (permissions, a full disk, a vanished file): named,
        # with what chiron was doing; a missing file the user named on the command line is usage.
        code = _report(describe_os_error(exc, args, state["command"]), cause=exc)
    except Exception as exc:  # a bug: never let it look like a verification result (exit 1)
        say(traceback.format_exc().rstrip("\n"), err=True)
        say(f"chiron: internal error: {type(exc).__name__}: {exc} (please report this)", err=True)
        code = ExitCode.ENVIRONMENT
    finally:
        _shutdown_telemetry()
    sys.exit(int(code or 0))


def _report(exc: ChironError, cause: BaseException | None = None) -> int:
    """Print a ChironError: one line on stderr, and chiron.error/1 on stdout with --json."""
    if state["verbose"]:
        say("".join(traceback.format_exception(cause or exc)).rstrip("\n"), err=True)
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
    return int(exc.exit_code)


def _shutdown_telemetry() -> None:
    """Write the metrics and close the exporters; a trace file that fails now costs a warning, not
    the command's result."""
    if "chiron.core.telemetry" not in sys.modules:
        return
    try:
        sys.modules["chiron.core.telemetry"].shutdown()
    except OSError as exc:
        log("warning", f"trace file: {exc.filename or ''}: {exc.strerror or exc}: metrics not written")
