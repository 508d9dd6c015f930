"""The command line: wiring only (options, rendering, command groups); the logic lives in the engines.

``app`` holds the typer application and ``main``; the commands are in ``archive``, ``host``, ``keys``
and ``mirror``. Heavy modules (tuf, pydantic models, rich, OpenTelemetry) are imported inside the
commands so that ``--help`` stays fast.
"""

from chiron.cli.app import main

__all__ = ["main"]
