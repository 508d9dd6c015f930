"""Deltas on demand: a host posts its inventory and gets the delta that fits it, built once and cached."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response

from chiron.errors import ChironError, UsageError
from chiron.service import problems
from chiron.service.auth import Read, Svc
from chiron.service.events import log_event
from chiron.service.models import DeltaInfo, Inventory
from chiron.service.problems import ProblemError
from chiron.service.responses import IMMUTABLE, RegionResponse
from chiron.service.routers import appliance

router = APIRouter(tags=["deltas"])
KEY = re.compile(r"^[0-9a-f]{64}$")


@router.post(
    "/v1/deltas",
    response_model=DeltaInfo,
    responses=problems.responses(
        "malformed-body",
        "unauthorized",
        "forbidden",
        "no-appliance",
        "not-found",
        "different-appliance",
        "body-too-large",
        "unsupported-media-type",
        "invalid-body",
        "bad-request",
        "appliance-changed",
    ),
)
async def make_delta(
    svc: Svc,
    inventory: Inventory,
    _who: Read,
    to: Annotated[str, Query(description="The appliance to upgrade to: latest, a metadata version or a version.")] = (
        "latest"
    ),
) -> DeltaInfo:
    """The delta from what the host holds (its ``chiron inventory``) to an appliance; download it from
    ``url`` (resumable). The host rebuilds the full appliance from it and verifies that completely."""
    entry = appliance(svc, to)
    if inventory.name != entry.name:
        raise ProblemError("different-appliance", f"the host runs {inventory.name}; this server's {to} is {entry.name}")
    doc: dict[str, Any] = inventory.model_dump(by_alias=True)
    try:
        made = await anyio.to_thread.run_sync(svc.deltas.get, doc, entry.path, entry.sha256)
    except UsageError as exc:  # the inventory, as delta.make reads it back: named without the cache's paths
        log_event("error", f"making a delta from {entry.path}: {exc.diagnostics()}")
        raise ProblemError(
            "bad-request", "this inventory cannot be used to make a delta (the service log says why)"
        ) from None
    except ChironError as exc:
        # The file changed, went away or could not be read while the delta was made from it (or the
        # cache is busy): a server-side matter. The caller retries; the log and the rescan say why.
        svc.catalog.wake.set()
        log_event("error", f"making a delta from {entry.path}: {exc.diagnostics()}")
        detail = f"{entry.filename}: cannot make a delta from it now; it is verified again"
        raise ProblemError("appliance-changed", detail, headers={"Retry-After": "5"}) from None
    svc.metrics.deltas.labels("hit" if made.hit else "miss").inc()
    current = any(r.metadata_versions.get("targets") == entry.metadata_version for r in inventory.releases)
    return DeltaInfo(
        name=made.name,
        version=made.version,
        metadata_version=entry.metadata_version,
        url=f"deltas/{made.key}.delta",
        size=made.size,
        sha256=made.sha256,
        full_size=made.full_size,
        carried=made.carried,
        reused=made.reused,
        current=current,
    )


@router.get(
    "/deltas/{key}.delta",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The delta."},
        206: {"description": "The requested range."},
        **problems.responses("unauthorized", "forbidden", "not-found", "range-not-satisfiable"),
    },
    summary="Download a delta made by POST /v1/deltas",
)
@router.head("/deltas/{key}.delta", include_in_schema=False)
async def download_delta(
    svc: Svc, request: Request, key: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], _who: Read
) -> Response:
    found = svc.deltas.find(key) if KEY.match(key) else None
    if found is None:
        raise ProblemError("not-found", f"no delta {key} (made by POST /v1/deltas; the cache may have dropped it)")
    if svc.settings.x_accel_redirect:
        return RegionResponse(
            request,
            fd=None,
            offset=0,
            length=found.size,
            sha256=found.sha256,
            media_type="application/octet-stream",
            accel=f"{svc.settings.x_accel_redirect}deltas/{key}.delta",
        )
    fd = None if request.method == "HEAD" else os.open(found.path, os.O_RDONLY | os.O_CLOEXEC)
    if fd is not None and os.fstat(fd).st_size != found.size:
        os.close(fd)
        raise ProblemError("not-found", f"delta {key} changed on disk; ask for it again (POST /v1/deltas)")
    return RegionResponse(
        request,
        fd=fd,
        offset=0,
        length=found.size,
        sha256=found.sha256,
        media_type="application/octet-stream",
        filename=f"{found.name or 'appliance'}-{key[:12]}.delta",
        cache_control=IMMUTABLE,
    )
