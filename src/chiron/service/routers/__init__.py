"""One router per resource (FastAPI's "bigger applications" layout), and what they share."""

from __future__ import annotations

from fastapi import Request

from chiron.service.catalog import Entry
from chiron.service.problems import ProblemError
from chiron.service.state import Services


def usable(svc: Services, entry: Entry) -> Entry:
    """``entry`` if it may be served now; else the problem, and a re-verification is started."""
    why = entry.changed()
    if why is not None:
        svc.metrics.refused_changed.inc()
        svc.catalog.wake.set()
        raise ProblemError(
            "appliance-changed",
            f"{why}; it is verified again and served only if it still verifies",
            headers={"Retry-After": "5"},
        )
    return entry


def appliance(svc: Services, ref: str = "latest") -> Entry:
    """The served appliance ``ref`` names (latest, a metadata version, a version, a file name)."""
    if not svc.catalog.ready:
        raise ProblemError("not-ready", "the appliances are still being verified", headers={"Retry-After": "5"})
    snapshot = svc.catalog.snapshot
    entry = snapshot.find(ref)
    if entry is None:
        if not snapshot.entries:
            raise ProblemError("no-appliance", "no appliance verified: nothing is served (see /v1/appliances)")
        raise ProblemError("not-found", f"no verified appliance '{ref}' of {snapshot.default_name}")
    return usable(svc, entry)


def up(request: Request, levels_below_root: int) -> str:
    """The relative way from this page up to the service root ('../../' ...): links keep working under
    any path prefix a front end adds."""
    depth = len([p for p in request.url.path.split("/") if p]) - levels_below_root
    return "../" * max(depth, 0)


def descriptor(svc: Services, entry: Entry) -> int:
    """A private descriptor of the verified file for one response; the problem if it was just retired."""
    fd = entry.dup()
    if fd is None:
        svc.catalog.wake.set()
        raise ProblemError("appliance-changed", f"{entry.filename}: changed just now", headers={"Retry-After": "5"})
    return fd
