"""Time as chiron writes it: UTC, whole seconds, one ISO format."""

from __future__ import annotations

from datetime import UTC, datetime

ISO = "%Y-%m-%dT%H:%M:%SZ"


def utc_from_epoch(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def iso(when: datetime) -> str:
    """``when`` as chiron writes times: 2026-11-30T12:00:00Z."""
    return when.strftime(ISO)


def parse_iso(text: str) -> datetime:
    """A time chiron wrote (ValueError for anything else), as an aware UTC datetime."""
    return datetime.strptime(text, ISO).replace(tzinfo=UTC)
