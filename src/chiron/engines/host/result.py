"""What install, upgrade and rollback report (``chiron.host-result/1``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chiron.core.hoststate import ReleaseRecord


@dataclass
class HostResult:
    op: str
    release: str
    name: str
    version: str
    previous: str | None
    installer: str
    environment: str
    seconds: float
    notices: list[str] = field(default_factory=list)
    changed: bool = True  # False when the archive was already the live release (a re-run)
    trial: dict[str, Any] | None = None  # trial.json after activation (docs/host.md), when it ran

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.host-result/1",
            "op": self.op,
            "changed": self.changed,
            "release": self.release,
            "appliance": {"name": self.name, "version": self.version},
            "previous": self.previous,
            "installer": self.installer,
            "environment": self.environment,
            "notices": self.notices,
            "seconds": round(self.seconds, 3),
            "trial": self.trial,
        }


def result(
    op: str, rid: str, rel: ReleaseRecord, previous: str | None, seconds: float, notices: list[str]
) -> HostResult:
    return HostResult(
        op=op,
        release=rid,
        name=rel.name,
        version=rel.version,
        previous=previous,
        installer=rel.installer,
        environment=rel.environment,
        seconds=seconds,
        notices=notices,
    )
