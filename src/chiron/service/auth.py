"""Who is asking: a token sent as ``Authorization: Bearer TOKEN`` or as HTTP Basic with the user
``__token__`` (what pip and uv send from ``https://__token__:TOKEN@host/simple/``), and the scope
each route needs. A missing, unknown, revoked or expired token is 401 (the same answer for all, so
nothing is learnt about which tokens exist); a valid token without the scope is 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from chiron.service import tokens
from chiron.service.problems import ProblemError
from chiron.service.state import Services

CHALLENGE = {"WWW-Authenticate": 'Basic realm="chiron", charset="UTF-8", Bearer realm="chiron"'}

bearer = HTTPBearer(auto_error=False, scheme_name="token", description="Authorization: Bearer TOKEN")
basic = HTTPBasic(
    auto_error=False,
    scheme_name="basic",
    description="User __token__, password TOKEN: what pip and uv send from https://__token__:TOKEN@host/simple/",
)


@dataclass(frozen=True)
class Principal:
    id: str | None  # None: anonymous
    name: str
    scopes: frozenset[str]

    @property
    def label(self) -> str:
        """Who did it, for job and host records."""
        return f"token {self.id} ({self.name})" if self.id else "anonymous"

    def as_state(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": sorted(self.scopes)}


ANONYMOUS = Principal(None, "anonymous", frozenset({"read"}))


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def _token_text(b: HTTPAuthorizationCredentials | None, c: HTTPBasicCredentials | None) -> str | None:
    if b is not None:
        return b.credentials
    if c is not None:
        if c.username != "__token__":
            raise ProblemError("unauthorized", "HTTP Basic credentials must use the user __token__", headers=CHALLENGE)
        return c.password
    return None


def authenticate(svc: Services, text: str) -> Principal:
    parts = tokens.split(text)
    row = svc.db.token(parts[0]) if parts else None
    ok = row is not None and parts is not None and tokens.matches(parts[1], row["secret_sha256"])
    if ok and row is not None and not row["revoked"]:
        expires = row["expires"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if expires is None or now < expires:
            return Principal(row["id"], row["name"], frozenset(row["scopes"].split()))
    raise ProblemError("unauthorized", "the token is not valid (unknown, revoked or expired)", headers=CHALLENGE)


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's principal, which must have ``scope`` (``read`` may be anonymous
    when the service allows anonymous reads)."""

    async def check(
        request: Request,
        b: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        c: Annotated[HTTPBasicCredentials | None, Depends(basic)],
    ) -> Principal:
        svc = services(request)
        text = _token_text(b, c)
        if text is None:
            if scope == "read" and svc.settings.anonymous_read:
                return ANONYMOUS
            raise ProblemError("unauthorized", f"this needs a token with the {scope} scope", headers=CHALLENGE)
        principal = authenticate(svc, text)
        request.state.principal = principal.as_state()
        if not tokens.allows(set(principal.scopes), scope):
            have = ", ".join(sorted(principal.scopes))
            raise ProblemError("forbidden", f"token {principal.id} ({principal.name}) has {have}; this needs {scope}")
        return principal

    return check


Svc = Annotated[Services, Depends(services)]
Read = Annotated[Principal, Depends(require("read"))]
Report = Annotated[Principal, Depends(require("report"))]
Admin = Annotated[Principal, Depends(require("admin"))]
