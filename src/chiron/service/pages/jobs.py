"""The refresh jobs pages: the jobs with their state, one job with its log (the page reloads itself
while the job runs: no script), and the forms that start a refresh and cancel a running job. The same
scope as their API (``/v1/jobs``: admin); every form carries the session's CSRF token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chiron.service.auth import Svc
from chiron.service.pages.common import HEADERS, PageError, base_of, page
from chiron.service.pages.session import Session, check_csrf, viewer
from chiron.service.problems import ProblemError

router = APIRouter(include_in_schema=False)
Admin = Annotated[Session, viewer("admin")]
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
Csrf = Annotated[str, Form(max_length=500)]


@router.get("/ui/jobs", response_class=HTMLResponse)
def jobs(request: Request, svc: Svc, _who: Admin) -> HTMLResponse:
    return page(request, "jobs.html", jobs=svc.db.jobs(), store=svc.settings.store, runner=svc.jobs is not None)


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, svc: Svc, job_id: JobId, _who: Admin) -> HTMLResponse:
    found = svc.db.job(job_id)
    if found is None:
        raise PageError(404, "Not found", f"no job {job_id}")
    return page(request, "job.html", job=found, running=found["state"] in ("queued", "running"))


def _problem(exc: ProblemError) -> PageError:
    return PageError(exc.status, "Refused", exc.detail)


@router.post("/ui/jobs/refresh")
def start(
    request: Request, svc: Svc, who: Admin, csrf: Csrf = "", force: Annotated[str, Form(max_length=10)] = ""
) -> Response:
    check_csrf(who, csrf)
    if svc.jobs is None:
        raise PageError(404, "No store", "this service was started without --store: it runs no refresh jobs")
    try:
        job_id = svc.jobs.submit(f"token {who.token_id} ({who.name})", force=force == "on")
    except ProblemError as exc:
        raise _problem(exc) from None
    return RedirectResponse(f"{base_of(request)}ui/jobs/{job_id}", status_code=303, headers=dict(HEADERS))


@router.post("/ui/jobs/{job_id}/cancel")
def cancel(request: Request, svc: Svc, job_id: JobId, who: Admin, csrf: Csrf = "") -> Response:
    check_csrf(who, csrf)
    if svc.jobs is None:
        raise PageError(404, "No store", "this service was started without --store: it runs no refresh jobs")
    try:
        svc.jobs.cancel(job_id, f"token {who.token_id} ({who.name})")
    except ProblemError as exc:
        raise _problem(exc) from None
    return RedirectResponse(f"{base_of(request)}ui/jobs/{job_id}", status_code=303, headers=dict(HEADERS))
