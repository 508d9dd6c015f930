"""The fleet view: which host runs which release, who is behind the newest version, whose last
operation failed, who has gone silent; computed from each host's newest checked receipt.

Pure: the caller (``chiron serve``, ``chiron serve hosts list``) passes the hosts it knows with their
newest receipts and the newest version of each appliance it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FAILED_RESULTS = ("failed", "refused")


@dataclass(frozen=True)
class Newest:
    """The newest version of an appliance the site serves."""

    name: str
    version: str
    metadata_version: int


def _parse(when: str | None) -> datetime | None:
    if not when:
        return None
    try:
        return datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def host_view(
    host: dict[str, Any], newest: dict[str, Newest], now: datetime, silent_after: timedelta
) -> dict[str, Any]:
    """One host: its state, what its newest receipt says, and how it compares with the newest release."""
    receipt = host.get("receipt") or {}
    appliance = receipt.get("appliance")
    targets = (receipt.get("metadata_versions") or {}).get("targets")
    latest = newest.get(appliance["name"]) if appliance else None
    behind = None if latest is None or targets is None else int(targets) < latest.metadata_version
    last_op = receipt.get("last_operation")
    seen = _parse(host.get("last_seen"))
    return {
        "host": host["host"],
        "state": host["state"],
        "key_sha256": host.get("key_sha256"),
        "last_seen": host.get("last_seen"),
        "seq": host.get("last_seq") or 0,
        "appliance": appliance,
        "targets_version": targets,
        "behind": behind,
        "newest": None if latest is None else {"version": latest.version, "metadata_version": latest.metadata_version},
        "last_operation": last_op,
        "failed": bool(last_op and last_op.get("result") in FAILED_RESULTS),
        "silent": host["state"] == "approved" and (seen is None or now - seen > silent_after),
        "warnings": receipt.get("warnings") or [],
    }


def fleet_view(
    hosts: list[dict[str, Any]],
    newest: dict[str, Newest],
    *,
    now: datetime | None = None,
    silent_after: timedelta = timedelta(days=1),
) -> dict[str, Any]:
    """The whole fleet with a summary; hosts sorted: failed first, then behind, then by id."""
    now = now or datetime.now(UTC)
    views = [host_view(h, newest, now, silent_after) for h in hosts]
    views.sort(key=lambda v: (not v["failed"], v["behind"] is not True, v["host"]))
    summary = {
        "hosts": len(views),
        "approved": sum(v["state"] == "approved" for v in views),
        "pending": sum(v["state"] == "pending" for v in views),
        "revoked": sum(v["state"] == "revoked" for v in views),
        "current": sum(v["behind"] is False for v in views),
        "behind": sum(v["behind"] is True for v in views),
        "failed": sum(v["failed"] for v in views),
        "silent": sum(v["silent"] for v in views),
    }
    return {
        "newest": {
            n.name: {"version": n.version, "metadata_version": n.metadata_version}
            for n in sorted(newest.values(), key=lambda n: n.name)
        },
        "summary": summary,
        "hosts": views,
    }
