"""The package index: PEP 503/691 pages over a verified appliance's wheels, and the files themselves.

``/simple/`` is the default appliance (the newest, or the release an enclave host runs);
``/index/REF/simple/`` any other (REF: a metadata version, a version, or ``latest``). Files are at
``/files/SHA256/NAME`` whatever page links them, with the core metadata at ``NAME.metadata``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from packaging.utils import canonicalize_name

from chiron.service import problems, simple
from chiron.service.auth import Read, Svc
from chiron.service.catalog import Entry
from chiron.service.problems import ProblemError
from chiron.service.ranges import etag, none_match
from chiron.service.responses import IMMUTABLE, RegionResponse
from chiron.service.routers import appliance, descriptor, up, usable
from chiron.service.state import Services

router = APIRouter(tags=["index"])
Sha = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The file's signed sha256.")]
Ref = Annotated[str, Path(description="latest, a metadata version, or an appliance version.")]
Fmt = Annotated[str | None, Query(alias="format", description="Override the Accept header (PEP 691).")]
INDEX_CACHE = "max-age=60, must-revalidate"
PAGE = problems.responses("unauthorized", "forbidden", "not-found", "not-acceptable", "appliance-changed")


def _cached(svc: Services, key: tuple[object, ...], render: Callable[[], bytes]) -> tuple[bytes, str]:
    found = svc.pages.get(key)
    if found is None:
        body = render()
        found = body, etag(hashlib.sha256(body).hexdigest())
        if len(svc.pages) > 20_000:  # bounded: many versions times many projects
            svc.pages.clear()
        svc.pages[key] = found
    return found


def _page(request: Request, page: tuple[bytes, str], fmt: str) -> Response:
    body, tag = page
    private = "private, " if "authorization" in request.headers else ""
    headers = {"ETag": tag, "Cache-Control": private + INDEX_CACHE, "Vary": "Accept, Authorization"}
    if none_match(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=simple.MEDIA[fmt], headers=headers)


def _format(request: Request, fmt: str | None) -> str:
    chosen = simple.negotiate(request.headers.get("accept"), fmt)
    if chosen is None:
        raise ProblemError("not-acceptable", f"serves {simple.JSON_V1}, {simple.HTML_V1} and text/html")
    return chosen


def _yanked(svc: Services, entry: Entry) -> dict[str, str]:
    return {name: reason for name, reason in svc.yanks().items() if name in entry.dists}


def _root(svc: Services, request: Request, ref: str, fmt: str | None) -> Response:
    entry = appliance(svc, ref)
    chosen = _format(request, fmt)
    key = (str(entry.path), entry.fsig, "", chosen, "")
    return _page(request, _cached(svc, key, lambda: simple.project_list(entry.projects, chosen)), chosen)


def _project(svc: Services, request: Request, ref: str, project: str, fmt: str | None, depth: int) -> Response:
    canonical = canonicalize_name(project)
    if canonical != project:  # PEP 503: one URL per project
        target = f"../{canonical}/" + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(target, status_code=301)
    entry = appliance(svc, ref)
    dists = entry.projects.get(canonical)
    if not dists:
        raise ProblemError("not-found", f"{entry.filename} has no project {canonical}")
    chosen = _format(request, fmt)
    prefix = up(request, depth) + "files/"
    key = (str(entry.path), entry.fsig, canonical, chosen, prefix)
    page = _cached(svc, key, lambda: simple.project_page(canonical, dists, chosen, prefix, _yanked(svc, entry)))
    return _page(request, page, chosen)


@router.get("/simple/", responses=PAGE, summary="Project list of the default appliance (PEP 503/691)")
async def simple_root(svc: Svc, request: Request, _who: Read, fmt: Fmt = None) -> Response:
    return _root(svc, request, "latest", fmt)


@router.get("/simple/{project}/", responses=PAGE, summary="One project's files (PEP 503/691/658/714)")
async def simple_project(svc: Svc, request: Request, project: str, _who: Read, fmt: Fmt = None) -> Response:
    return _project(svc, request, "latest", project, fmt, 0)


@router.get("/index/{ref}/simple/", responses=PAGE, summary="Project list of one appliance version")
async def index_root(svc: Svc, request: Request, ref: Ref, _who: Read, fmt: Fmt = None) -> Response:
    return _root(svc, request, ref, fmt)


@router.get("/index/{ref}/simple/{project}/", responses=PAGE, summary="One project's files in one appliance version")
async def index_project(svc: Svc, request: Request, ref: Ref, project: str, _who: Read, fmt: Fmt = None) -> Response:
    return _project(svc, request, ref, project, fmt, 0)


@router.get(
    "/files/{sha256}/{filename}",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file (or its core metadata)."},
        206: {"description": "The requested range."},
        304: {"description": "Not modified (If-None-Match)."},
        **problems.responses(
            "unauthorized", "forbidden", "not-found", "range-not-satisfiable", "appliance-changed", "not-ready"
        ),
    },
    summary="A wheel by its signed sha256, or NAME.metadata: its core metadata (PEP 658)",
)
@router.head("/files/{sha256}/{filename}", include_in_schema=False)
async def file(svc: Svc, request: Request, sha256: Sha, filename: str, _who: Read) -> Response:
    if not svc.catalog.ready:
        raise ProblemError("not-ready", "the appliances are still being verified", headers={"Retry-After": "5"})
    metadata = filename.endswith(".metadata")
    wanted = filename.removesuffix(".metadata") if metadata else filename
    found = svc.catalog.snapshot.dist(sha256, wanted)
    if found is None:
        raise ProblemError("not-found", f"no verified appliance holds {wanted} with sha256 {sha256}")
    entry, dist = found
    usable(svc, entry)
    if metadata:
        if dist.metadata is None or dist.metadata_sha256 is None:
            raise ProblemError("not-found", f"{wanted} has no core metadata to serve")
        tag = etag(dist.metadata_sha256)
        if none_match(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers={"ETag": tag, "Cache-Control": IMMUTABLE})
        headers = {"ETag": tag, "Cache-Control": IMMUTABLE}
        return Response(dist.metadata, media_type="text/plain; charset=utf-8", headers=headers)
    accel = None
    if svc.settings.x_accel_redirect:
        accel = await anyio.to_thread.run_sync(svc.accel_file, entry, dist)
    return RegionResponse(
        request,
        fd=None if accel or request.method == "HEAD" else descriptor(svc, entry),
        offset=dist.offset,
        length=dist.size,
        sha256=dist.sha256,
        media_type="application/octet-stream",
        accel=accel,
    )


@router.get(
    "/index/{ref}/requirements/{env}.txt",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The pinned requirements with --hash, as signed."},
        **problems.responses("unauthorized", "forbidden", "not-found", "appliance-changed"),
    },
    summary="The locked requirements of one environment (pip install --require-hashes -r URL)",
)
async def requirements(
    svc: Svc, request: Request, ref: Ref, env: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")], _who: Read
) -> Response:
    entry = appliance(svc, ref)
    member = f"lock/requirements-{env}.txt"
    if member not in entry.handle.targets:
        envs = sorted(
            n.removeprefix("lock/requirements-").removesuffix(".txt")
            for n in entry.handle.targets
            if n.startswith("lock/requirements-")
        )
        raise ProblemError("not-found", f"{entry.filename} has no environment {env} (it has {', '.join(envs)})")
    data = await anyio.to_thread.run_sync(entry.handle.read, member)  # re-hashed against the signed targets
    tag = etag(entry.handle.target(member).sha256)
    headers = {"ETag": tag, "Cache-Control": INDEX_CACHE}
    if none_match(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="text/plain; charset=utf-8", headers=headers)
