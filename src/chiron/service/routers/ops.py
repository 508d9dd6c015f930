"""Operations: liveness, readiness, Prometheus metrics, yanking a file from the index, a landing page."""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chiron import __version__
from chiron.service import problems
from chiron.service.auth import Admin, Read, Svc, require, service_state
from chiron.service.models import Health, Yank

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz(svc: Svc) -> dict[str, Any]:
    snapshot = svc.catalog.snapshot
    return {"status": "ok", "appliances": len(snapshot.entries), "failed": len(snapshot.failed)}


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready: still verifying, or the database fails."}},
    summary="Readiness: the appliances were verified once and the database answers",
)
async def readyz(svc: Svc) -> Response:
    snapshot = svc.catalog.snapshot
    detail = [why for _path, why in snapshot.failed]
    ready = svc.catalog.ready and svc.catalog.error is None
    if svc.catalog.error is not None:
        detail.insert(0, f"cannot read the sources: {svc.catalog.error}")
    elif not ready:
        detail.insert(0, "the appliances are still being verified")
    try:
        svc.db.one("SELECT 1")
    except Exception as exc:  # the database is what readiness is about: any failure is "not ready"
        ready = False
        detail.insert(0, f"database: {exc}")
    doc = {
        "status": "ok" if ready else "not ready",
        "appliances": len(snapshot.entries),
        "failed": len(snapshot.failed),
    }
    return JSONResponse({**doc, "detail": detail}, status_code=200 if ready else 503)


async def _metrics_reader(request: Request) -> None:
    if not service_state(request).settings.public_metrics:
        await require("read")(request)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **problems.responses("unauthorized", "forbidden")},
    summary="Prometheus metrics (a read token, unless the service makes them public)",
)
async def metrics(svc: Svc, _allowed: Annotated[None, Depends(_metrics_reader)]) -> Response:
    svc.metrics.appliances.set(len(svc.catalog.snapshot.entries))
    svc.metrics.unverified.set(len(svc.catalog.snapshot.failed))
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/v1/yanks",
    responses=problems.responses(
        "malformed-body", "body-too-large", "invalid-body", "unsupported-media-type", "unauthorized", "forbidden"
    ),
    summary="Yank a file from the index (PEP 592), or un-yank it with reason null",
)
def yank(svc: Svc, body: Yank, who: Admin) -> dict[str, Any]:
    """pip and uv skip a yanked file unless a requirement pins exactly its version; the bytes stay served."""
    changed = svc.db.set_yank(body.filename, body.reason, who.label)
    svc.forget_pages()
    return {"filename": body.filename, "yanked": body.reason is not None, "reason": body.reason, "changed": changed}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def landing(svc: Svc, _who: Read) -> HTMLResponse:
    """A page for a person: what is served and where."""
    snapshot = svc.catalog.snapshot
    rows = "".join(
        f"<tr><td>{html.escape(e.name)}</td><td>{html.escape(e.version)}</td><td>{e.metadata_version}</td>"
        f'<td><a href="appliances/{html.escape(e.filename)}">{html.escape(e.filename)}</a></td>'
        f'<td><a href="index/{e.metadata_version}/simple/">index</a></td><td>{e.expires:%Y-%m-%d %H:%M}Z</td></tr>'
        for e in sorted(snapshot.entries, key=lambda e: (e.name, -e.metadata_version))
    )
    failed = "".join(f"<li>{html.escape(why)}</li>" for _p, why in snapshot.failed)
    page = (
        f"<!DOCTYPE html><html><head><title>chiron serve</title></head><body><h1>chiron serve {__version__}</h1>"
        '<p>Package index: <a href="simple/">simple/</a> (pip install --index-url URL/simple/). '
        'API: <a href="openapi.json">openapi.json</a> (docs/serve.md).</p>'
        "<table><tr><th>appliance</th><th>version</th><th>metadata version</th><th>download</th><th>index</th>"
        f"<th>expires</th></tr>{rows}</table>"
        + (f"<h2>Not served (did not verify)</h2><ul>{failed}</ul>" if failed else "")
        + "</body></html>"
    )
    return HTMLResponse(page)
