"""Time as chiron writes it: UTC, whole seconds, one ISO format (``2024-05-01T12:00:00Z``)."""

from __future__ import annotations

from datetime import UTC, datetime

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_from_epoch(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def now() -> datetime:
    """The current time, UTC, to the whole second."""
    return datetime.now(UTC).replace(microsecond=0)


def iso(dt: datetime) -> str:
    """``dt`` in chiron's one ISO format; a naive datetime is taken as UTC (python-tuf's are aware)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime(ISO_FORMAT)


def parse_iso(text: str) -> datetime:
    """The UTC datetime of ``text`` in chiron's ISO format; ValueError for anything else."""
    if not isinstance(text, str):  # the text often comes from a JSON file: say what is wrong, not TypeError
        raise ValueError(f"{text!r} is not a time in the form {ISO_FORMAT}")
    return datetime.strptime(text, ISO_FORMAT).replace(tzinfo=UTC)
