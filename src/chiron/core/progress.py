"""Progress display: a bar on an interactive terminal, nothing when piped or in --json mode."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Protocol


class Bar(Protocol):
    def advance(self, n: int) -> None: ...
    def __enter__(self) -> Bar: ...
    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None: ...


class _Silent:
    def advance(self, n: int) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Rich:
    def __init__(self, total: int, description: str) -> None:
        # rich costs ~45 ms to import: only paid when a bar is actually shown.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._p: Any = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
            console=Console(stderr=True),
        )
        self._task = self._p.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self._p.advance(self._task, n)

    def __enter__(self) -> _Rich:
        self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._p.stop()


def bar(total: int, description: str, *, enabled: bool) -> Bar:
    """A byte-progress bar, shown only if enabled and stderr is a terminal."""
    if enabled and sys.stderr.isatty():
        try:
            return _Rich(total, description)
        except ImportError:
            pass
    return _Silent()
