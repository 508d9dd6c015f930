"""Receipts, enrolment and the fleet: which host runs which release, from their signed receipts."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request

from chiron.engines.fleet import fleet_view
from chiron.service import problems, site
from chiron.service.auth import Admin, Report, Svc
from chiron.service.models import Approval, Enrolment, Fleet, HostDetail, Receipt, ReceiptAccepted
from chiron.service.problems import ProblemError
from chiron.service.state import Services

router = APIRouter(tags=["hosts"])
HostPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
BODY = ("malformed-body", "body-too-large", "unsupported-media-type", "invalid-body")


async def _raw(request: Request) -> dict[str, Any]:
    """The body exactly as sent: the signature covers these bytes' JSON, not a re-serialised model."""
    doc: dict[str, Any] = await request.json()
    return doc


@router.post(
    "/v1/receipts",
    response_model=ReceiptAccepted,
    status_code=201,
    responses=problems.responses(
        *BODY,
        "unauthorized",
        "forbidden",
        "unknown-host",
        "host-not-approved",
        "unknown-host-key",
        "bad-signature",
        "replayed-receipt",
    ),
)
async def post_receipt(svc: Svc, request: Request, receipt: Receipt, who: Report) -> ReceiptAccepted:
    """Accept a host's signed receipt (``chiron receipt --server``); refused unless the host's key is
    approved, the signature verifies and the sequence number is new."""
    doc = await _raw(request)
    latest = site.newest(svc.catalog.snapshot)
    try:
        accepted = await anyio.to_thread.run_sync(site.accept_receipt, svc.db, doc, who.label, latest)
    except ProblemError as exc:
        svc.metrics.receipts.labels(exc.slug).inc()
        raise
    svc.metrics.receipts.labels("accepted").inc()
    return ReceiptAccepted(**accepted)


@router.post(
    "/v1/enrolments",
    response_model=Enrolment,
    status_code=202,
    responses=problems.responses(*BODY, "unauthorized", "forbidden", "bad-signature", "enrolment-conflict"),
)
async def enrol(svc: Svc, request: Request, receipt: Receipt, who: Report) -> Enrolment:
    """Ask for a host's key to be approved, proven by a receipt it signed; an admin approves it."""
    doc = await _raw(request)
    return Enrolment(**await anyio.to_thread.run_sync(site.enrol, svc.db, doc, who.label))


def _fleet(svc: Services) -> dict[str, Any]:
    view = fleet_view(
        svc.db.hosts(), site.newest(svc.catalog.snapshot), silent_after=timedelta(seconds=svc.settings.silent_after)
    )
    for status in ("current", "behind", "failed", "silent", "pending"):
        svc.metrics.hosts.labels(status).set(view["summary"][status])
    return view


@router.get("/v1/hosts", response_model=Fleet, responses=problems.responses("unauthorized", "forbidden"))
def fleet(
    svc: Svc,
    _who: Admin,
    behind: Annotated[bool | None, Query(description="Only hosts behind (true) or not behind (false).")] = None,
    failed: Annotated[bool | None, Query(description="Only hosts whose last operation failed (true).")] = None,
    state: Annotated[str | None, Query(pattern="^(pending|approved|revoked)$")] = None,
) -> dict[str, Any]:
    """The fleet from the newest receipt of each host: failed first, then hosts behind the newest."""
    view = _fleet(svc)
    view["hosts"] = [
        h
        for h in view["hosts"]
        if (behind is None or h["behind"] is behind)
        and (failed is None or h["failed"] is failed)
        and (state is None or h["state"] == state)
    ]
    return view


@router.get(
    "/v1/hosts/{host}",
    response_model=HostDetail,
    responses=problems.responses("unauthorized", "forbidden", "not-found"),
)
def host_detail(svc: Svc, host: HostPath, _who: Admin) -> dict[str, Any]:
    """One host and its last 20 receipts."""
    view = next((h for h in _fleet(svc)["hosts"] if h["host"] == host), None)
    if view is None:
        raise ProblemError("not-found", f"no host {host}")
    return {"host": view, "receipts": svc.db.receipts(host)}


@router.post(
    "/v1/hosts/{host}/approve",
    response_model=Enrolment,
    responses=problems.responses(*BODY, "unauthorized", "forbidden", "not-found"),
)
def approve(svc: Svc, host: HostPath, body: Approval, who: Admin) -> dict[str, Any]:
    """Approve a host's key (give ``key_sha256`` to approve one that has not enrolled yet, or to re-key)."""
    return site.approve(svc.db, host, body.key_sha256, who.label)


@router.post(
    "/v1/hosts/{host}/revoke",
    response_model=Enrolment,
    responses=problems.responses("unauthorized", "forbidden", "not-found"),
)
def revoke(svc: Svc, host: HostPath, _who: Admin) -> dict[str, Any]:
    """Stop accepting the host's receipts (its history stays)."""
    return site.revoke(svc.db, host)
