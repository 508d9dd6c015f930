"""Progress display: a bar on an interactive terminal, nothing when piped or in --json mode; and the
step a command is in, so that an error the system reports without a file name still says what
chiron was doing."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Protocol

_steps: list[str] = []
_failed: tuple[BaseException, list[str]] | None = None


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Mark a block as ``what`` chiron is doing (e.g. "writing dist/chiron.pex", and inside it
    "packing wheels"); an exception leaving it remembers the steps it was raised in (``failed_step``)."""
    global _failed
    _steps.append(what)
    try:
        yield
    except BaseException as exc:
        if _failed is None or _failed[0] is not exc:
            _failed = (exc, list(_steps))  # the innermost step is left first: the whole stack is here
        raise
    finally:
        _steps.pop()


def failed_step(exc: BaseException) -> str | None:
    """The steps ``exc`` was raised in, outermost first ("writing X: packing wheels"), if any."""
    return ": ".join(_failed[1]) if _failed is not None and _failed[0] is exc else None


class Bar(Protocol):
    def advance(self, n: int) -> None: ...
    def __enter__(self) -> Bar: ...
    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None: ...


class _Silent:
    def __init__(self, description: str) -> None:
        self._step = step(description)

    def advance(self, n: int) -> None:
        pass

    def __enter__(self) -> _Silent:
        self._step.__enter__()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self._step.__exit__(t, v, tb)


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
        self._step = step(description)

    def advance(self, n: int) -> None:
        self._p.advance(self._task, n)

    def __enter__(self) -> _Rich:
        self._step.__enter__()
        self._p.start()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self._p.stop()
        self._step.__exit__(t, v, tb)


def bar(total: int, description: str, *, enabled: bool) -> Bar:
    """A byte-progress bar, shown only if enabled and stderr is a terminal."""
    if enabled and sys.stderr.isatty():
        try:
            return _Rich(total, description)
        except ImportError:
            pass
    return _Silent(description)
