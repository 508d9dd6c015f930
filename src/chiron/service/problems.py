"""Errors as RFC 9457 problem documents (``application/problem+json``) with stable ``type`` URIs.

Every refusal of the service is one of the types below, so a client can act on ``type`` without
parsing prose; ``title`` is fixed per type, ``detail`` names the thing at fault. docs/serve.md lists
the types (a test keeps the list and this table equal).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chiron.errors import ChironError, EnvironmentProblem, Refused, UsageError, VerificationError
from chiron.service.events import log_event

BASE = "https://chiron.invalid/problems/"
MEDIA_TYPE = "application/problem+json"

# slug -> (HTTP status, title)
TYPES: dict[str, tuple[int, str]] = {
    "bad-request": (400, "The request is not valid"),
    "malformed-body": (400, "The request body is not valid JSON"),
    "unauthorized": (401, "Authentication is required"),
    "forbidden": (403, "The token does not have the scope this needs"),
    "unknown-host": (403, "The host is not enrolled"),
    "host-not-approved": (403, "The host's key is not approved yet"),
    "unknown-host-key": (403, "The receipt is signed by a key that is not the host's approved key"),
    "not-found": (404, "Not found"),
    "no-appliance": (404, "No verified appliance to serve"),
    "no-store": (404, "This server has no mirror store"),
    "method-not-allowed": (405, "Method not allowed"),
    "not-acceptable": (406, "None of the accepted media types can be served"),
    "different-appliance": (409, "The request is for another appliance than this server serves"),
    "replayed-receipt": (409, "The receipt's sequence number is not above the last one accepted"),
    "enrolment-conflict": (409, "The host id is enrolled with another key"),
    "job-running": (409, "A refresh job is already running on this store"),
    "refused": (409, "Refused"),
    "body-too-large": (413, "The request body is larger than allowed"),
    "unsupported-media-type": (415, "The request body must be application/json"),
    "range-not-satisfiable": (416, "The range is outside the file"),
    "invalid-body": (422, "The request body does not match its schema"),
    "bad-signature": (422, "The signature does not verify"),
    "verification-failed": (422, "Verification failed"),
    "internal": (500, "Internal error"),
    "appliance-changed": (503, "The appliance changed on disk since it was verified; it is not served"),
    "not-ready": (503, "The service is not ready"),
    "unavailable": (503, "A resource the service needs is unavailable"),
}


class Problem(BaseModel):
    """RFC 9457 problem details; some types add members (``errors``, ``problems``, ``job``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A stable URI naming the kind of problem (see docs/serve.md).")
    title: str = Field(description="The fixed summary of this type.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What is wrong in this occurrence, naming the thing at fault.")
    instance: str | None = Field(default=None, description="The request path.")


class ProblemError(Exception):
    """Raised anywhere in a request: answered as the problem document of ``slug``."""

    def __init__(self, slug: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        if slug not in TYPES:
            raise ValueError(f"unknown problem type {slug}")
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def status(self) -> int:
        return TYPES[self.slug][0]


def document(slug: str, detail: str, instance: str | None = None, **extra: Any) -> dict[str, Any]:
    status, title = TYPES[slug]
    doc: dict[str, Any] = {"type": BASE + slug, "title": title, "status": status, "detail": detail}
    if instance is not None:
        doc["instance"] = instance
    doc.update(extra)
    return doc


def body(slug: str, detail: str, instance: str | None = None, **extra: Any) -> bytes:
    return json.dumps(document(slug, detail, instance, **extra), sort_keys=True, default=str).encode()


def from_chiron_error(exc: ChironError) -> ProblemError:
    """An engine's error as a problem: what the caller sent or may do (verification, refusal, bad
    request) in its one-line diagnostics; the server's own trouble only logged."""
    extra: dict[str, Any] = {}
    if isinstance(exc, VerificationError):
        extra["problems"] = exc.problems
        return ProblemError("verification-failed", exc.diagnostics(), **extra)
    if isinstance(exc, Refused):
        return ProblemError("refused", exc.diagnostics())
    if isinstance(exc, UsageError):
        return ProblemError("bad-request", exc.diagnostics())
    # The server's own trouble (its database, disk, files): the log says what and where, the caller
    # is told that it failed, never the server's paths or errors.
    slug = "unavailable" if isinstance(exc, EnvironmentProblem) else "internal"
    log_event("error", f"{slug}: {exc.diagnostics()}")
    return ProblemError(slug, f"the service cannot do this now ({slug}); its log says why")


def responses(*slugs: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route: the problem statuses it can answer with."""
    out: dict[int | str, dict[str, Any]] = {}
    for slug in slugs:
        status, title = TYPES[slug]
        entry = out.setdefault(status, {"model": Problem, "description": "", "content": {MEDIA_TYPE: {}}})
        entry["description"] = "; ".join(filter(None, [entry["description"], f"{slug}: {title}"]))
    return out
