"""Global options where users put them.

typer (like click) accepts a group's options only before the subcommand's name, so
``chiron mirror refresh --store S --log-format json`` (a systemd unit's natural spelling) would be
refused. Before parsing, ``place_options`` moves the global options (``--verbose``/``-v``,
``--log-format``, ``--trace-file``, ``--config``) to the front and ``--json`` to just after the name of the
command that has it, wherever they were given. It walks the command tree typer built, so an option's
value is never mistaken for an option (``--registry --json`` keeps ``--json`` as the value), and a
command that defines an option of the same name keeps it. Everything after ``--`` stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GLOBAL_FLAGS = frozenset({"--verbose", "-v"})
GLOBAL_VALUED = frozenset({"--log-format", "--trace-file", "--config"})
JSON = "--json"


@dataclass
class Placed:
    """The command line in the order typer parses it, and what was learnt on the way."""

    args: list[str]
    global_args: list[str] = field(default_factory=list)  # the global options as given
    command: list[str] = field(default_factory=list)  # the command's path, e.g. ["mirror", "refresh"]
    json: bool = False  # --json given and the command has it


def _options(command: Any) -> tuple[set[str], set[str]]:
    """The option names of ``command``: all of them, and those that take a value."""
    names: set[str] = set()
    valued: set[str] = set()
    for param in getattr(command, "params", ()):
        opts = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
        if getattr(param, "param_type_name", "") != "option":
            continue
        names.update(opts)
        if not getattr(param, "is_flag", False) and not getattr(param, "count", False):
            valued.update(opts)
    return names, valued


def place_options(root: Any, args: list[str]) -> Placed:
    """Reorder ``args`` for the typer command tree ``root`` (see the module's docstring)."""
    placed = Placed(args=[])
    rest: list[str] = []
    command, leaf_at, json_moved, json_kept = root, 0, False, False
    names, valued = _options(command)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, _value = arg.partition("=")
        if arg == "--":
            rest += args[i:]
            break
        if arg in GLOBAL_FLAGS and arg not in names:
            placed.global_args.append(arg)
        elif name in GLOBAL_VALUED and name not in names:
            placed.global_args += [arg] if eq else args[i : i + 2]
            i += 0 if eq else 1
        elif arg == JSON and JSON not in names:
            json_moved = True  # before the command's name: placed after it below
        elif name in valued and not eq:
            rest += args[i : i + 2]  # an option and its value, whatever the value looks like
            i += 1
        elif not arg.startswith("-") and arg in getattr(command, "commands", {}):
            command = command.commands[arg]
            names, valued = _options(command)
            placed.command.append(arg)
            rest.append(arg)
            leaf_at = len(rest)
        else:
            json_kept = json_kept or arg == JSON
            rest.append(arg)
        i += 1
    if json_moved:
        # After the command's name: the command parses it or, lacking it, says so (exit 2).
        rest.insert(leaf_at, JSON)
    placed.json = JSON in names and (json_moved or json_kept)
    placed.args = placed.global_args + rest
    return placed
