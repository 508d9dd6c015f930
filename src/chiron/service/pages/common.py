"""What every page shares: the Jinja2 environment (the report's, with the pages' templates first), the
response headers, links relative to the service root, and the two ways a page refuses (log in first;
an error page).

Pages are server-rendered HTML with no script. Their Content-Security-Policy allows the one stylesheet
the service serves itself and forms posted back to it, nothing else; so even a name from an appliance
that escaped escaping could neither run nor fetch anything.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from chiron import __version__
from chiron.engines.report.render import environment

if TYPE_CHECKING:
    import jinja2

PACKAGE = "chiron.service.pages"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # pages carry a CSRF token and what a session may see
}


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the log-in form (and back afterwards)."""

    def __init__(self, request: Request) -> None:
        super().__init__("log in first")
        self.request = request


class PageError(Exception):
    """A page that cannot be shown: an HTML page with ``status`` saying why."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


@functools.cache
def templates() -> jinja2.Environment:
    return environment(PACKAGE)


def base_of(request: Request) -> str:
    """The service root, relative to this page (``../`` per level), so links work under any path prefix."""
    path: str = request.scope["path"]
    return "../" * max(0, path.count("/") - 1)


def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """Render a page template (autoescaped) with the context every page has."""
    html = (
        templates()
        .get_template(template)
        .render(
            base=base_of(request),
            path=request.scope["path"],
            session=getattr(request.state, "session", None),
            version=__version__,
            **ctx,
        )
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def next_of(request: Request) -> str:
    """Where to come back to after logging in: this page, relative to the root (never another site)."""
    path: str = request.scope["path"].lstrip("/")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


def safe_next(value: str | None) -> str:
    """A ``next`` from a form, kept only when it is a page of this service (no open redirect)."""
    if not value or not value.startswith("ui/") or "//" in value or "\\" in value or ":" in value.split("?")[0]:
        return "ui/"
    return "ui/" if value.startswith(("ui/login", "ui/logout")) else value


async def login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
    target = f"{base_of(request)}ui/login?next={quote(next_of(request), safe='/')}"
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


async def page_error(request: Request, exc: PageError) -> HTMLResponse:
    return page(request, "error.html", status=exc.status, title=exc.title, detail=exc.detail)
