"""Who is asking: a token sent as ``Authorization: Bearer TOKEN`` or as HTTP Basic with the user
``__token__`` (what pip and uv send from ``https://__token__:TOKEN@host/simple/``), and the scope
each route needs. A missing, unknown, revoked or expired token is 401 (the same answer for all, so
nothing is learnt about which tokens exist); a valid token without the scope is 403.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from chiron.service import tokens
from chiron.service.problems import ProblemError
from chiron.service.state import Services

CHALLENGE = {"WWW-Authenticate": 'Basic realm="chiron", charset="UTF-8", Bearer realm="chiron"'}
SCHEME = (
    "A chiron serve token (chiron serve token add): Authorization: Bearer TOKEN, or HTTP Basic with the user "
    "__token__ and the token as the password (what pip and uv send from https://__token__:TOKEN@host/simple/)."
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


def service_state(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def services(request: Request) -> Services:
    """The dependency (async: a sync dependency would cost a worker-thread hop on every request)."""
    return service_state(request)


def token_text(header: str | None) -> str | None:
    """The token in an Authorization header (Bearer, or Basic with the user __token__), None if absent."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ProblemError(
                "unauthorized", "the HTTP Basic credentials are not valid base64", headers=CHALLENGE
            ) from None
        if not sep or user != "__token__":
            raise ProblemError("unauthorized", "HTTP Basic credentials must use the user __token__", headers=CHALLENGE)
        return password
    raise ProblemError("unauthorized", f"unsupported authorization scheme {scheme[:20]!r}", headers=CHALLENGE)


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


class TokenAuth(SecurityBase):
    """A dependency (and OpenAPI security scheme): the caller's principal, which must have ``scope``;
    ``read`` may be anonymous when the service allows anonymous reads. One dependency without
    sub-dependencies: it runs on every request, and each resolved dependency costs time."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.model = HTTPBearerModel(description=SCHEME)
        self.scheme_name = "token"

    async def __call__(self, request: Request) -> Principal:
        svc = service_state(request)
        text = token_text(request.headers.get("authorization"))
        if text is None:
            if self.scope == "read" and svc.settings.anonymous_read:
                return ANONYMOUS
            raise ProblemError("unauthorized", f"this needs a token with the {self.scope} scope", headers=CHALLENGE)
        principal = authenticate(svc, text)
        request.state.principal = principal.as_state()
        if not tokens.allows(set(principal.scopes), self.scope):
            have = ", ".join(sorted(principal.scopes))
            raise ProblemError(
                "forbidden", f"token {principal.id} ({principal.name}) has {have}; this needs {self.scope}"
            )
        return principal


def require(scope: str) -> TokenAuth:
    return TokenAuth(scope)


Svc = Annotated[Services, Depends(services)]
Read = Annotated[Principal, Depends(TokenAuth("read"))]
Report = Annotated[Principal, Depends(TokenAuth("report"))]
Admin = Annotated[Principal, Depends(TokenAuth("admin"))]
