"""Appliances and their detached signatures for download, and the list of what is served."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse

from chiron.service import problems
from chiron.service.auth import Read, Svc
from chiron.service.catalog import Entry
from chiron.service.models import ApplianceInfo, ApplianceList, FailedAppliance
from chiron.service.problems import ProblemError
from chiron.service.ranges import etag
from chiron.service.responses import RegionResponse
from chiron.service.routers import appliance, descriptor
from chiron.service.tokens import allows

router = APIRouter(tags=["appliances"])
File = Annotated[
    str, Path(description="A served file name, or latest (the default appliance); NAME.sig: its signature")
]
LATEST_CACHE = "no-cache"
DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The appliance, or its signature."},
    206: {"description": "The requested range (resume with curl -C -, or chiron download)."},
    304: {"description": "Not modified (If-None-Match)."},
    307: {"description": "latest: the file it stands for now."},
    **problems.responses(
        "unauthorized", "forbidden", "not-found", "range-not-satisfiable", "appliance-changed", "not-ready"
    ),
}


def info(entry: Entry, default: Entry | None) -> ApplianceInfo:
    return ApplianceInfo(
        name=entry.name,
        version=entry.version,
        metadata_version=entry.metadata_version,
        file=entry.filename,
        url=f"appliances/{entry.filename}",
        signature_url=f"appliances/{entry.filename}.sig" if entry.signature else None,
        size=entry.size,
        sha256=entry.sha256,
        created=entry.created,
        expires=f"{entry.expires:%Y-%m-%dT%H:%M:%SZ}",
        latest=entry is default,
        index_url=f"index/{entry.metadata_version}/simple/",
        wheels=len(entry.dists),
    )


@router.get("/v1/appliances", response_model=ApplianceList, responses=problems.responses("unauthorized", "forbidden"))
async def list_appliances(svc: Svc, who: Read) -> ApplianceList:
    """Every verified appliance served (URLs relative to the service root), and files that did not verify
    (why, with the server's paths, for an admin token only)."""
    snapshot = svc.catalog.snapshot
    entries = sorted(snapshot.entries, key=lambda e: (e.name, e.metadata_version, e.filename))
    latest = {name: snapshot.latest(name) for name in snapshot.names()}
    return ApplianceList(
        default=snapshot.default_name,
        appliances=[info(e, latest.get(e.name)) for e in entries],
        failed=[
            FailedAppliance(path=p, problem=why) for p, why in snapshot.failures(admin=allows(set(who.scopes), "admin"))
        ],
    )


@router.get("/appliances/{file}", responses=DOWNLOAD, summary="Download an appliance")
@router.head("/appliances/{file}", include_in_schema=False)
async def download(svc: Svc, request: Request, file: File, _who: Read) -> Response:
    """The whole file with Content-Length, a strong ETag (its sha256), Range and If-Range; ``latest``
    redirects to the file it stands for now, ``NAME.sig`` is the detached SSH signature."""
    if file in ("latest", "latest.sig"):
        entry = appliance(svc, "latest")
        target = entry.filename + (".sig" if file.endswith(".sig") else "")
        return RedirectResponse(target, status_code=307, headers={"Cache-Control": LATEST_CACHE})
    if file.endswith(".sig"):
        entry = appliance(svc, file.removesuffix(".sig"))
        if entry.signature is None:
            raise ProblemError("not-found", f"{entry.filename} has no detached signature beside it")
        headers = {"ETag": etag(hashlib.sha256(entry.signature).hexdigest()), "Cache-Control": "no-cache"}
        return Response(entry.signature, media_type="text/plain; charset=utf-8", headers=headers)
    entry = appliance(svc, file)
    return RegionResponse(
        request,
        fd=None if request.method == "HEAD" or svc.settings.x_accel_redirect else descriptor(svc, entry),
        offset=0,
        length=entry.size,
        sha256=entry.sha256,
        media_type="application/octet-stream",
        filename=entry.filename,
        cache_control="public, max-age=3600",
        accel=svc.accel_appliance(entry) if svc.settings.x_accel_redirect else None,
    )
