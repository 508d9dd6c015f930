"""``chiron config show`` and ``chiron config flags``: what is in effect, and where it came from."""

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from chiron.cli.app import JsonOpt, app, config_layers, emit, flag, flags_provider, log, say, settings, state

config_app = typer.Typer(
    help="Settings (files, CHIRON_* environment, options) and feature flags: what is in effect and why.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")


def _plain(value: Any) -> Any:
    """A setting's value as JSON: paths as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _given(pairs: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs as options (the command-line layer)."""
    from chiron.core.config import KEYS
    from chiron.errors import UsageError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise UsageError(f"--set {pair}: give KEY=VALUE, e.g. --set host.prefix=/srv/chiron")
        if key not in KEYS and not key.startswith("flags."):
            raise UsageError(f"--set {pair}: unknown key {key} (chiron config show lists them)")
        out[key] = [v for v in value.split(os.pathsep) if v] if key in KEYS and KEYS[key].kind == "paths" else value
    return out


@config_app.command("show")
def config_show(
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Show the effect of an option: KEY=VALUE (e.g. host.prefix=/srv); repeat."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every setting's effective value and where it came from: default, a file, a CHIRON_* variable or an option.
    An unknown key or a wrong type is one line naming the file and the key (exit 2)."""
    from chiron.core.config import KEYS, system_file, user_file
    from chiron.core.settings import load

    effective = load(_given(set_ or []), layers=config_layers())
    if not set_:
        state["settings"] = effective
    system = system_file()
    user, _required = user_file(state["config"])
    rows = []
    for dotted, key in KEYS.items():
        kind, origin = effective.sources[dotted]
        rows.append(
            {
                "key": dotted,
                "value": _plain(effective.value(dotted)),
                "source": kind,
                "origin": origin,
                "env": key.env,
                "option": key.option,
            }
        )
    files = {
        "system": {"path": str(system) if system else None, "exists": bool(system and system.is_file())},
        "user": {"path": str(user) if user else None, "exists": bool(user and user.is_file())},
    }
    if as_json:
        emit({"schema": "chiron.config-show/1", "files": files, "settings": rows})
        return
    for what, info in files.items():
        say(f"{what} file: {info['path'] or '(none)'}{'' if info['exists'] else ' (absent)'}")
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        where = "default" if r["source"] == "default" else f"{r['source']}: {r['origin']}"
        shown = "-" if r["value"] is None else r["value"]
        say(f"{r['key']:<{width}}  {shown!s:<32}  ({where})")


@config_app.command("flags")
def config_flags(as_json: JsonOpt = False) -> None:
    """Each feature flag: its default, its value and where the value came from (OpenFeature)."""
    from chiron.core.config import configured
    from chiron.core.flags import FLAGS

    provider = flags_provider()
    evaluated = [flag(name) for name in FLAGS]
    known = set(FLAGS)
    unknown = sorted(set(settings().settings.flags) - known) if configured(config_layers()) else []
    for name in unknown:
        log("notice", f"flags.{name}: chiron has no such flag (known: {', '.join(sorted(known))})")
    if as_json:
        emit(
            {
                "schema": "chiron.config-flags/1",
                "provider": provider,
                "flags": [e.as_dict() for e in evaluated],
                "unknown": unknown,
            }
        )
        return
    say(f"provider: {provider}")
    for e in evaluated:
        error = f"; {e.error}" if e.error else ""
        say(f"{e.name:<16} {str(e.value).lower():<6} (default {str(e.default).lower()}; {e.source}{error})")
        say(f"  {FLAGS[e.name].description}")
