"""Command-line wiring (typer) only: parse options, call an engine, print, map errors to exit codes.

Heavy modules (tuf, pydantic models, rich, OpenTelemetry) are imported inside the commands so that
``--help`` stays fast.
"""

import copy
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chiron import __version__
from chiron.core.runtime import self_archive
from chiron.core.text import terminal_safe

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

# Set by main() and the global options: --verbose, --json (the command has it and it was given),
# --log-format, the global options as given (passed on at an upgrade's hand-over), the command's path.
# --config FILE, and the settings read from it (chiron.core.config), cached for the run.
state: dict[str, Any] = {
    "verbose": False,
    "json": False,
    "log_format": "human",
    "global_args": [],
    "command": [],
    "config": None,
    "layers": None,
    "settings": None,
    "flags_provider": None,
}
FRESH_STATE = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON report on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chiron {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks of errors. Global options go anywhere.")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="Messages on stderr: human (default) or json (one object per line); [telemetry]."
        ),
    ] = None,
    trace_file: Annotated[
        Path | None,
        typer.Option(help="Append OpenTelemetry spans and metrics as JSON lines to this file; [telemetry]."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Settings file to read instead of ~/.config/chiron/config.toml (docs/config.md)."
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options."""
    from chiron.errors import UsageError

    state["verbose"] = verbose
    state["config"] = config
    named = "--log-format"
    if log_format is None:
        log_format, trace_file, named = _telemetry_settings(trace_file)
    if log_format not in ("human", "json"):
        raise UsageError(f"{named}: '{log_format}' is not human or json")
    state["log_format"] = log_format
    if trace_file is not None or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("CHIRON_TRACE_FILE"):
        from chiron.core import telemetry as _telemetry

        _telemetry.configure(trace_file)


def _telemetry_settings(trace_file: Path | None) -> tuple[str, Path | None, str]:
    """--log-format and --trace-file from the settings when not given. The typed model is built only when
    a settings file has a [telemetry] table (start-up: verify must not pay for pydantic otherwise); the
    environment alone is read as it always was."""
    if any(layer.kind in ("system", "user") and "telemetry" in layer.data for layer in config_layers()):
        effective = settings()
        trace_file = trace_file or effective.value("telemetry.trace_file")
        return str(effective.value("telemetry.log_format")), trace_file, "[telemetry] log_format"
    return os.environ.get("CHIRON_LOG_FORMAT") or "human", trace_file, "$CHIRON_LOG_FORMAT"


def config_layers() -> list[Any]:
    """The settings layers (files, environment) read with tomllib, once per run."""
    if state["layers"] is None:
        from chiron.core.config import read_layers

        state["layers"] = read_layers(state["config"])
    return list(state["layers"])


def settings() -> Any:
    """The effective settings (chiron.core.settings.Effective), built once per run."""
    if state["settings"] is None:
        from chiron.core.settings import load

        state["settings"] = load(layers=config_layers())
    return state["settings"]


def setting(dotted: str, given: Any, *, only_if_set: bool = False) -> Any:
    """An option's value: as given on the command line, else from the settings (docs/config.md). When
    nothing is configured the built-in default is taken without building the typed model (start-up
    time). ``only_if_set``: None unless a settings layer sets it (the option has no default)."""
    if given is not None:
        return given
    from chiron.core.config import KEYS, configured

    if not configured(config_layers()):
        return None if only_if_set else copy.copy(KEYS[dotted].default)
    effective = settings()
    if only_if_set and effective.sources[dotted][0] == "default":
        return None
    return effective.value(dotted)


def flags_provider() -> str:
    """Bind the OpenFeature provider chiron's flags are evaluated with (once per run); its name."""
    if state.get("flags_provider") is None:
        from chiron.core.config import configured
        from chiron.core.flags import use_provider

        effective = settings() if configured(config_layers()) else None
        values = effective.flag_values() if effective else {}
        ofs = effective.settings.openfeature if effective else None
        state["flags_provider"] = use_provider(
            values, ofs.provider if ofs else None, ofs.options if ofs else {}, lambda m: log("notice", m)
        )
    return str(state["flags_provider"])


def flag(name: str) -> Any:
    """Evaluate one of chiron's flags (chiron.core.flags.Evaluated); an error gives its default and a notice."""
    from chiron.core.flags import evaluate

    flags_provider()
    return evaluate(name, lambda m: log("notice", m))


def say(text: str, *, err: bool = False) -> None:
    """Print a report line (or lines) for the operator, escaped: archive-controlled names and
    messages (member names, package names, problems, versions) must not drive the terminal."""
    typer.echo(terminal_safe(text), err=err)


def log(level: str, message: str, **fields: Any) -> None:
    """A message for the operator on stderr: a plain line, or one JSON object with --log-format json."""
    if state["log_format"] == "json":
        from datetime import UTC, datetime

        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = {"time": when, "level": level, "message": message, **fields}
        # ensure_ascii (the default) writes every control and non-ASCII character as \uNNNN.
        sys.stderr.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        return
    prefix = {"error": "chiron: error: ", "notice": "notice: ", "warning": "warning: "}.get(level, "")
    say(prefix + message, err=True)


def emit(data: dict[str, Any]) -> None:
    """A --json report on stdout: indented on a terminal, else ONE line, so that appending each run's
    report to a file makes JSON Lines. ensure_ascii escapes every control character."""
    if sys.stdout.isatty():
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        typer.echo(json.dumps(data, sort_keys=True, separators=(",", ":")))


def archive_arg(path: Path | None, command: str) -> Path:
    if path is not None:
        return path
    me = self_archive()
    if me is None:
        from chiron.errors import UsageError

        raise UsageError(f"{command}: give the appliance to check (chiron {command} PATH), or run it from one")
    return me


# Options whose default comes from the settings (docs/config.md): None here, resolved by setting().
PrefixOpt = Annotated[
    Path | None,
    typer.Option("--prefix", help="Where releases live (bin/, current, releases/); default /opt/chiron; [host]."),
]
StateOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Host state (default: PREFIX/state; [host] state_dir).")
]
WaitOpt = Annotated[
    float | None, typer.Option("--wait", help="Seconds to wait for another operation's lock (default 0; [host] wait).")
]
InstallerOpt = Annotated[
    str | None, typer.Option("--installer", help="auto (uv if present, else pip; the default), uv or pip; [host].")
]
ImagesOpt = Annotated[
    str | None,
    typer.Option("--images", help="load (into the Docker Engine; the default), push (--registry) or skip; [host]."),
]
RegistryOpt = Annotated[
    str | None, typer.Option("--registry", help="Registry HOST[:PORT][/PREFIX] to push to; [host] registry.")
]


StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="The mirror store directory (default: mirror; [mirror] store).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="CHIRON_TOKEN", help="Token for a chiron serve ($CHIRON_TOKEN; or in the URL)."),
]
CaOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA certificates for the server's TLS (PEM).")]


def client(token: str | None, cacert: Path | None) -> Any:
    """How to talk to a chiron serve: the token and the CA to trust."""
    from chiron.sources.http import Client

    return Client(token=token, cafile=cacert)


def tool_wheels_dir(given: Path | None) -> Path:
    from chiron.errors import UsageError

    wheels = setting("mirror.tool_wheels", given)
    if wheels is None:
        raise UsageError(
            "no --tool-wheels given",
            hint="pass the directory holding chiron's own wheels, or set [mirror] tool_wheels / CHIRON_TOOL_WHEELS",
        )
    return Path(wheels)


def host_paths(prefix: Path | None, state_dir: Path | None) -> tuple[Path, Path | None]:
    """--prefix and --state-dir as given, else from the settings ([host])."""
    return setting("host.prefix", prefix), setting("host.state_dir", state_dir)
