"""The fleet page: which host runs which release, when it last sent a receipt, who is behind the newest
version served, whose last operation failed. The same view as ``GET /v1/hosts`` (and its scope: admin)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from chiron.engines.fleet import fleet_view
from chiron.service import site
from chiron.service.auth import Svc
from chiron.service.pages.common import page
from chiron.service.pages.session import Session, viewer

router = APIRouter(include_in_schema=False)
Admin = Annotated[Session, viewer("admin")]
SHOWS = {"all": "every host", "behind": "hosts behind", "failed": "hosts whose last operation failed"}


@router.get("/ui/fleet", response_class=HTMLResponse)
def fleet(
    request: Request, svc: Svc, _who: Admin, show: Annotated[str, Query(pattern="^(all|behind|failed)$")] = "all"
) -> HTMLResponse:
    view = fleet_view(
        svc.db.hosts(), site.newest(svc.catalog.snapshot), silent_after=timedelta(seconds=svc.settings.silent_after)
    )
    hosts = [
        h
        for h in view["hosts"]
        if show == "all" or (show == "behind" and h["behind"] is True) or (show == "failed" and h["failed"])
    ]
    return page(request, "fleet.html", fleet=view, hosts=hosts, show=show, shows=SHOWS)
