"""Operations: liveness, readiness, Prometheus metrics, yanking a file from the index, and ``/``, which
sends a person's browser to the pages (``ui/``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chiron.service import problems
from chiron.service.auth import Admin, Svc, require, service_state
from chiron.service.events import log_event
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
    # Open to anyone (a load balancer's probe): it says what is wrong, never the server's paths or
    # errors; those are in the server log (the rescan logs the files and the sources).
    snapshot = svc.catalog.snapshot
    detail = [why for _name, why in snapshot.failures(admin=False)]
    ready = svc.catalog.ready and svc.catalog.error is None
    if svc.catalog.error is not None:
        detail.insert(0, "cannot read the sources (the server log says why)")
    elif not ready:
        detail.insert(0, "the appliances are still being verified")
    try:
        svc.db.one("SELECT 1")
    except Exception as exc:  # the database is what readiness is about: any failure is "not ready"
        ready = False
        log_event("error", f"readiness: the database does not answer: {exc}")
        detail.insert(0, "the database does not answer (the server log says why)")
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


@router.get("/", include_in_schema=False)
async def landing() -> RedirectResponse:
    """A person's browser starts at the pages (ui/): they log in there with a token (a session cookie)."""
    return RedirectResponse("ui/", status_code=303)
