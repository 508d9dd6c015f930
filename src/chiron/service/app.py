"""The FastAPI application: routers, error handling as problem documents, and the background work
(verifying appliances as they appear or change, scheduled refresh jobs) that lives as long as it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from chiron import __version__
from chiron.engines.deltacache import DeltaCache
from chiron.errors import ChironError
from chiron.service import pages, problems
from chiron.service.catalog import Catalog
from chiron.service.db import Database, now
from chiron.service.events import log_event
from chiron.service.jobs import JobRunner
from chiron.service.observe import BodyLimitMiddleware, Metrics, ObserveMiddleware
from chiron.service.problems import ProblemError
from chiron.service.routers import appliances, deltas, hosts, index, jobs, ops
from chiron.service.settings import Settings
from chiron.service.state import Services

DESCRIPTION = (
    "One service for a site: a PEP 503/691 package index over verified appliances, appliances and deltas "
    "for download, signed install receipts and the fleet view, and refresh jobs on a mirror store. "
    "Hosts verify everything they download: the service is never trusted. Errors are RFC 9457 problem "
    "documents. See docs/serve.md."
)
_STATUS_SLUGS = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed"}
_STATUS_SLUGS |= {406: "not-acceptable", 413: "body-too-large", 415: "unsupported-media-type", 503: "unavailable"}


def build_app(svc: Services | None) -> FastAPI:
    """The application around ``svc`` (None: only for the OpenAPI schema)."""
    app = FastAPI(
        title="chiron serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan if svc is not None else None,
        # No Swagger UI or ReDoc: they load scripts from a CDN, which an enclave cannot reach.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = svc
    for router in (index.router, appliances.router, deltas.router, hosts.router, jobs.router, ops.router):
        app.include_router(router)
    pages.install(app)  # the pages for people (log-in, appliances, diff, fleet, jobs): not in the OpenAPI schema
    app.add_exception_handler(ProblemError, _problem)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(ChironError, _chiron_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)
    if svc is not None:
        settings = svc.settings

        def limit(method: str, path: str) -> int:
            return settings.max_inventory if (method, path) == ("POST", "/v1/deltas") else settings.max_body

        app.add_middleware(BodyLimitMiddleware, limit=limit)
        app.add_middleware(ObserveMiddleware, metrics=svc.metrics, sink=_sink(settings), on_success=_last_use(svc))
    return app


def create_app(settings: Settings) -> FastAPI:
    """Open the database, find the sources and make the application (nothing is verified until it starts)."""
    db = Database(settings.db)
    catalog = Catalog(settings)
    runner = None
    if settings.store is not None:
        runner = JobRunner(db, settings.store, settings.tool_wheels, lambda _id, _state: catalog.wake.set())
    svc = Services(
        settings=settings,
        db=db,
        catalog=catalog,
        metrics=Metrics(),
        deltas=DeltaCache(settings.cache_dir / "deltas", max_bytes=settings.delta_cache_bytes),
        jobs=runner,
    )
    return build_app(svc)


def _sink(settings: Settings) -> Any:
    """Where the access log goes: stderr, a file (appended, one line per request), or nowhere."""
    if not settings.json_log:
        return None
    if settings.access_log is None:
        return sys.stderr.write
    settings.access_log.parent.mkdir(parents=True, exist_ok=True)
    stream = settings.access_log.open("a", buffering=1, encoding="utf-8")
    return stream.write


def _last_use(svc: Services) -> Any:
    """Record a token's last successful use, at most once a minute per token (a write per request would
    cost an fsync each)."""
    seen: dict[str, float] = {}

    def note(principal: dict[str, Any]) -> None:
        token_id = principal.get("id")
        if token_id and time.monotonic() - seen.get(token_id, -1e9) > 60:
            seen[token_id] = time.monotonic()
            with contextlib.suppress(Exception):
                svc.db.touch_token(token_id, now())

    return note


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    svc: Services = app.state.services
    if svc.jobs is not None:
        for job_id in svc.jobs.recover():
            log_event("warning", f"job {job_id} was interrupted by the last stop of the service: marked failed")
    tasks = [asyncio.create_task(_watch(svc))]
    if svc.jobs is not None and svc.settings.refresh_every:
        tasks.append(asyncio.create_task(_timer(svc, svc.jobs, svc.settings.refresh_every)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        if svc.jobs is not None:
            await anyio.to_thread.run_sync(svc.jobs.stop)
        svc.catalog.close()


async def _watch(svc: Services) -> None:
    """Verify what the sources hold now and whenever asked (a changed file) or every rescan_every seconds."""
    while True:
        try:
            if await anyio.to_thread.run_sync(svc.catalog.scan):
                snapshot = svc.catalog.snapshot
                names = ", ".join(f"{e.filename} ({e.name} {e.version})" for e in snapshot.entries) or "nothing"
                log_event("info", f"serving {names}")
                for _path, why in snapshot.failed:
                    log_event("error", f"not served: {why}")
        except ChironError as exc:
            log_event("error", f"scanning the sources: {exc.diagnostics()}")
        except Exception as exc:  # a source directory gone for a moment, anything else: the watcher outlives it
            log_event("error", f"scanning the sources: {type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        await anyio.to_thread.run_sync(svc.catalog.wake.wait, svc.settings.rescan_every)
        svc.catalog.wake.clear()


async def _timer(svc: Services, runner: JobRunner, every: float) -> None:
    """Start a refresh job every ``every`` seconds after the last one was asked for (by anyone)."""
    while True:
        last = svc.db.last_job_created(str(runner.store), "refresh")
        due = (
            (datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) + timedelta(seconds=every))
            if last
            else None
        )
        wait = 0.0 if due is None else (due - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            try:
                job_id = await anyio.to_thread.run_sync(runner.submit, "timer")
                log_event("info", f"scheduled refresh job {job_id} started")
            except ProblemError as exc:
                log_event("warning", f"scheduled refresh not started: {exc.detail}")
            wait = every
        await asyncio.sleep(min(wait, 60.0))


def _respond(request: Request, exc: ProblemError) -> JSONResponse:
    doc = problems.document(exc.slug, exc.detail, request.url.path, **exc.extra)
    return JSONResponse(doc, status_code=exc.status, headers=exc.headers, media_type=problems.MEDIA_TYPE)


async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
    return _respond(request, exc)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    slug = _STATUS_SLUGS.get(exc.status_code, "bad-request" if exc.status_code < 500 else "internal")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if slug == "not-found" and detail == "Not Found":
        detail = f"nothing at {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 413:
        headers["Connection"] = "close"
    return _respond(request, ProblemError(slug, detail, headers=headers))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _respond(request, ProblemError("malformed-body", "the body is not valid JSON"))
    ctype = request.headers.get("content-type", "")
    if (
        request.method in ("POST", "PUT", "PATCH")
        and "json" not in ctype
        and any(e["loc"][:1] == ("body",) for e in errors)
    ):
        return _respond(request, ProblemError("unsupported-media-type", f"the body is {ctype or 'untyped'}: send JSON"))
    found = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors[:50]]
    first = found[0]
    detail = f"{'.'.join(first['loc'])}: {first['msg']}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
    return _respond(request, ProblemError("invalid-body", detail, errors=found))


async def _chiron_error(request: Request, exc: ChironError) -> JSONResponse:
    return _respond(request, problems.from_chiron_error(exc))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log_event(
        "error", f"internal error: {type(exc).__name__}: {exc}", path=request.url.path, traceback=traceback.format_exc()
    )
    return _respond(request, ProblemError("internal", f"internal error ({type(exc).__name__}); see the service log"))
