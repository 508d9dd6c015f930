"""The pages of ``chiron serve`` for people: log in with a service token, then the appliances and their
versions, one appliance (the report's view), the changes between two versions, the fleet and the refresh
jobs. Server-rendered (Jinja2, the report's templates and stylesheet), no script. A router per group."""

from __future__ import annotations

from fastapi import FastAPI

from chiron.service.pages import appliances, fleet, jobs, session, static
from chiron.service.pages.common import LoginRequired, PageError, login_required, page_error

ROUTERS = (session.router, appliances.router, fleet.router, jobs.router, static.router)


def install(app: FastAPI) -> None:
    """Add the pages and their two kinds of refusal (a log-in redirect, an error page) to ``app``."""
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(LoginRequired, login_required)  # type: ignore[arg-type]
    app.add_exception_handler(PageError, page_error)  # type: ignore[arg-type]
