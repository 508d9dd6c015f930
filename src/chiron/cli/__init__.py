"""The command line: wiring only (options, rendering, command groups); the logic lives in the engines.

``app`` holds the typer application and what the command modules share, ``entry`` holds ``main``; the
commands are in the other modules, one per command group. Heavy modules (tuf, pydantic models, rich,
OpenTelemetry) are imported inside the commands so that ``--help`` stays fast.
"""

from chiron.cli.entry import main

__all__ = ["main"]
