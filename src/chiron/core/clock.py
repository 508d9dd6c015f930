"""Time as chiron writes it: UTC, whole seconds, one ISO format."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_from_epoch(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
