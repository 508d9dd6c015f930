"""Logging in to the pages with a service token, the session cookie that follows, and CSRF tokens.

A person pastes a token (``chiron serve token add``) into the log-in form once; the service checks it as
the API does and answers with a session cookie: 256 random bits, stored only as their sha256, HttpOnly,
SameSite=Strict, Secure when the service speaks TLS itself, for at most 12 hours and never past the
token's own expiry. Every request re-checks the token behind the session, so revoking the token ends
its sessions at once. Each session has a CSRF token that every form carries and every POST must send
back; the log-in form, before any session, carries one tied to a short-lived cookie (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chiron.service import tokens
from chiron.service.auth import authenticate, service_state
from chiron.service.db import Database
from chiron.service.pages.common import HEADERS, LoginRequired, PageError, base_of, page, safe_next
from chiron.service.problems import ProblemError

router = APIRouter(include_in_schema=False)
COOKIE = "chiron_session"
LOGIN_CSRF = "chiron_login_csrf"
SESSION_TTL = timedelta(hours=12)
_STAMP = "%Y-%m-%dT%H:%M:%SZ"
Field = Annotated[str, Form(max_length=500)]


@dataclass(frozen=True)
class Session:
    """A logged-in person: the token behind the session, its scopes, and the session's CSRF token."""

    token_id: str
    name: str
    scopes: frozenset[str]
    csrf: str

    def allows(self, scope: str) -> bool:
        return tokens.allows(set(self.scopes), scope)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def open_session(db: Database, token_id: str, token_expires: str | None) -> tuple[str, int]:
    """A new session for a checked token: (cookie value, seconds it lasts). Expired ones are dropped."""
    now = _now()
    ends = now + SESSION_TTL
    if token_expires is not None:
        ends = min(ends, datetime.strptime(token_expires, _STAMP).replace(tzinfo=UTC))
    value = secrets.token_urlsafe(32)
    with db.transaction() as c:
        c.execute("DELETE FROM sessions WHERE expires <= ?", (now.strftime(_STAMP),))
        c.execute(
            "INSERT INTO sessions (id_sha256, token, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
            (_digest(value), token_id, secrets.token_urlsafe(32), now.strftime(_STAMP), ends.strftime(_STAMP)),
        )
    return value, max(1, int((ends - now).total_seconds()))


def find_session(db: Database, value: str | None) -> Session | None:
    """The session of a cookie value, if it and the token behind it are still valid."""
    if not value or len(value) > 100:
        return None
    row = db.one(
        "SELECT s.csrf, s.expires AS until, t.id, t.name, t.scopes, t.revoked, t.expires "
        "FROM sessions s JOIN tokens t ON t.id = s.token WHERE s.id_sha256 = ?",
        (_digest(value),),
    )
    now = _now().strftime(_STAMP)
    if row is None or row["until"] <= now or row["revoked"] or (row["expires"] is not None and row["expires"] <= now):
        return None
    return Session(row["id"], row["name"], frozenset(row["scopes"].split()), row["csrf"])


def close_session(db: Database, value: str | None) -> None:
    if value:
        with db.transaction() as c:
            c.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_digest(value),))


def viewer(scope: str) -> Any:
    """A dependency: the page's session, which must have ``scope`` (else a log-in redirect or a 403 page)."""

    async def current(request: Request) -> Session:
        svc = service_state(request)
        session = find_session(svc.db, request.cookies.get(COOKIE))
        if session is None:
            raise LoginRequired(request)
        request.state.session = session
        request.state.principal = {"id": session.token_id, "name": session.name, "scopes": sorted(session.scopes)}
        if not session.allows(scope):
            raise PageError(
                403,
                "Not allowed",
                f"token {session.token_id} ({session.name}) has {', '.join(sorted(session.scopes))}; "
                f"this page needs {scope}",
            )
        return session

    return Depends(current)


def check_csrf(session: Session, sent: str) -> None:
    """Refuse a form that does not carry this session's CSRF token (compared in constant time)."""
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise PageError(403, "Form refused", "the form did not carry this session's CSRF token: load the page again")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "ui/") -> Response:
    svc = service_state(request)
    if find_session(svc.db, request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(
            base_of(request) + safe_next(next), status_code=303, headers={"Cache-Control": "no-store"}
        )
    return _form(request, safe_next(next), None, 200)


def _form(request: Request, next_page: str, error: str | None, status: int) -> Response:
    csrf = secrets.token_urlsafe(32)
    response = page(request, "login.html", status=status, csrf=csrf, next=next_page, error=error)
    response.set_cookie(
        LOGIN_CSRF, csrf, max_age=3600, httponly=True, secure=_secure(request), samesite="strict", path="/"
    )
    return response


@router.post("/ui/login", response_class=HTMLResponse)
def login(request: Request, token: Field = "", csrf: Field = "", next: Field = "ui/") -> Response:
    svc = service_state(request)
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not csrf or not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        return _form(request, safe_next(next), "The form expired or was not sent from this page: log in again.", 403)
    try:
        principal = authenticate(svc, token.strip())
    except ProblemError:
        return _form(request, safe_next(next), "That token is not valid (unknown, revoked or expired).", 401)
    if not (tokens.allows(set(principal.scopes), "read")):
        have = ", ".join(sorted(principal.scopes))
        return _form(request, safe_next(next), f"That token has {have}: the pages need read (or admin).", 403)
    row = svc.db.token(str(principal.id))
    value, seconds = open_session(svc.db, str(principal.id), row["expires"] if row is not None else None)
    response = RedirectResponse(base_of(request) + safe_next(next), status_code=303, headers=dict(HEADERS))
    response.set_cookie(
        COOKIE, value, max_age=seconds, httponly=True, secure=_secure(request), samesite="strict", path="/"
    )
    response.delete_cookie(LOGIN_CSRF, path="/", httponly=True, secure=_secure(request), samesite="strict")
    request.state.principal = principal.as_state()
    return response


@router.post("/ui/logout", response_class=HTMLResponse)
def logout(request: Request, csrf: Field = "") -> Response:
    svc = service_state(request)
    value = request.cookies.get(COOKIE)
    session = find_session(svc.db, value)
    if session is None:
        raise LoginRequired(request)
    check_csrf(session, csrf)
    close_session(svc.db, value)
    response = RedirectResponse(base_of(request) + "ui/login", status_code=303, headers=dict(HEADERS))
    response.delete_cookie(COOKIE, path="/", httponly=True, secure=_secure(request), samesite="strict")
    return response
