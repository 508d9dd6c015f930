"""Start-up: coerce plain str and Path parameters, and flags, without pydantic.

typer 0.29 coerces every parameter value through a pydantic TypeAdapter: the first command-line
value costs the import of pydantic and the building of its adapters, ~0.1 s, which was a third of
``chiron verify`` of a small appliance and made every command pay for pydantic whether it uses it
or not. A ``str`` or ``Path`` parameter without a parser needs nothing pydantic adds: the value is
already a str, and typer's own Path checks (``coerce_cli_path``: readable, exists, ...) run
unchanged on a ``Path``; a flag's value is already a bool. Those parameters get the converters
below; every other parameter (numbers, ranges, lists, choices) keeps typer's coercion and messages.

This uses two typer internals (``typer._coercion.RuntimeParam`` and
``typer._param_types.coerce_cli_path``, typer is pinned in requirements/tool-constraints.txt). If a
typer release changes them, ``use_plain_coercion`` changes nothing and typer's coercion applies;
tests/test_cli.py notices that pydantic is imported again.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from typer._click import Context
    from typer._coercion import RuntimeParam
    from typer._param_types import coerce_cli_path
except ImportError:  # another typer: keep its own coercion
    RuntimeParam = None  # type: ignore[assignment,misc]


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _Flag(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return value if isinstance(value, bool) else bool(value)

    @dataclass(frozen=True)
    class _Str(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return value if isinstance(value, str) else os.fsdecode(value)

    @dataclass(frozen=True)
    class _Path(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            path = value if isinstance(value, Path) else Path(os.fsdecode(value))
            return coerce_cli_path(path, self.parameter_info, path_type=Path, param=param, ctx=ctx)


def _plain(param: Any) -> Any:
    """The converter for ``param`` if it is a plain str or Path parameter, else None."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", 1) is not None:
        return None
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or info.parser is not None or param.multiple or param.nargs != 1:
        return None
    if descriptor.annotation is bool and getattr(param, "is_flag", False):
        return _Flag(parameter_info=info, annotation=bool)
    if descriptor.annotation is str:
        return _Str(parameter_info=info, annotation=str)
    if descriptor.annotation is Path and info.path_type in (None, Path):
        return _Path(parameter_info=info, annotation=Path)
    return None


def use_plain_coercion(command: Any) -> None:
    """Give every plain str and Path parameter of ``command`` and its subcommands a converter that
    does not need pydantic (see the module's docstring)."""
    if RuntimeParam is None:
        return
    try:
        # --help is a parameter too, made on first use; made here so that it gets a converter.
        help_option = command.get_help_option(Context(command))
        for param in [*getattr(command, "params", ()), *([help_option] if help_option else [])]:
            runtime = _plain(param)
            if runtime is not None:
                param._runtime_param = runtime
        for sub in getattr(command, "commands", {}).values():
            use_plain_coercion(sub)
    except (AttributeError, TypeError):  # typer's internals changed: its own coercion applies
        return
