"""Refresh jobs on the mirror store: start one, follow its state and log, cancel it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from chiron.service import problems
from chiron.service.auth import Admin, Svc
from chiron.service.jobs import JobRunner
from chiron.service.models import Job, JobList, RefreshRequest
from chiron.service.problems import ProblemError
from chiron.service.state import Services

router = APIRouter(tags=["jobs"])
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


def _runner(svc: Services) -> JobRunner:
    if svc.jobs is None:
        raise ProblemError("no-store", "this service was started without --store: it runs no refresh jobs")
    return svc.jobs


def _job(svc: Services, job_id: str) -> dict[str, Any]:
    job = svc.db.job(job_id)
    if job is None:
        raise ProblemError("not-found", f"no job {job_id}")
    return job


@router.post(
    "/v1/jobs/refresh",
    response_model=Job,
    status_code=202,
    responses=problems.responses(
        "malformed-body",
        "body-too-large",
        "invalid-body",
        "unsupported-media-type",
        "unauthorized",
        "forbidden",
        "no-store",
        "job-running",
        "unavailable",
    ),
)
def start_refresh(svc: Svc, response: Response, who: Admin, body: RefreshRequest | None = None) -> dict[str, Any]:
    """Run ``chiron mirror refresh`` on the store as a background job (one at a time per store)."""
    job_id = _runner(svc).submit(who.label, force=bool(body and body.force))
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return _job(svc, job_id)


@router.get("/v1/jobs", response_model=JobList, responses=problems.responses("unauthorized", "forbidden"))
def list_jobs(svc: Svc, _who: Admin) -> dict[str, Any]:
    """The 50 newest jobs, newest first (without their logs)."""
    return {"jobs": svc.db.jobs()}


@router.get(
    "/v1/jobs/{job_id}", response_model=Job, responses=problems.responses("unauthorized", "forbidden", "not-found")
)
def get_job(svc: Svc, job_id: JobId, _who: Admin) -> dict[str, Any]:
    """A job's state, log lines and, when it succeeded, its chiron.mirror-refresh/1 report."""
    return _job(svc, job_id)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=Job,
    status_code=202,
    responses=problems.responses("unauthorized", "forbidden", "not-found", "no-store"),
)
def cancel_job(svc: Svc, job_id: JobId, who: Admin) -> dict[str, Any]:
    """Stop a running job (its worker gets SIGTERM; the job ends failed)."""
    _runner(svc).cancel(job_id, who.label)
    return _job(svc, job_id)
