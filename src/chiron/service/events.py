"""Service events (what is served, files that failed, jobs, errors a caller is not shown) as JSON
lines on stderr: the server's log. What clients are told names no server path; this says why."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any


def log_event(level: str, message: str, **fields: Any) -> None:
    """One event as one JSON line on stderr."""
    record = {"time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "level": level, "message": message}
    sys.stderr.write(json.dumps({**record, **fields}, sort_keys=True, default=str) + "\n")
