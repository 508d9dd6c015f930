"""What operators see of the service: a JSON access log, Prometheus metrics, request ids, and the
request body limit enforced before any byte of a body is parsed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chiron.service import problems

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """The service's metrics, in a registry of its own (several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chiron_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.seconds = Histogram(
            "chiron_http_request_seconds",
            "Time to answer a request (until its last byte is handed to the socket)",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.bytes = Counter("chiron_http_response_bytes", "Body bytes sent", ["route"], registry=r)
        self.sendfile = Counter(
            "chiron_sendfile_bytes", "Body bytes the kernel sent from the file (zero-copy)", registry=r
        )
        self.in_flight = Gauge("chiron_http_requests_in_flight", "Requests being answered", registry=r)
        self.appliances = Gauge("chiron_appliances_served", "Verified appliances being served", registry=r)
        self.unverified = Gauge("chiron_appliances_failed", "Appliance files that did not verify", registry=r)
        self.refused_changed = Counter(
            "chiron_changed_on_disk", "Requests refused because an appliance changed after verification", registry=r
        )
        self.hosts = Gauge("chiron_fleet_hosts", "Hosts by what their newest receipt says", ["status"], registry=r)
        self.receipts = Counter("chiron_receipts", "Receipts by outcome", ["outcome"], registry=r)
        self.jobs = Counter("chiron_jobs", "Finished jobs by kind and state", ["kind", "state"], registry=r)
        self.deltas = Counter("chiron_deltas", "Deltas asked for, by whether the cache had them", ["cache"], registry=r)


class BodyLimitMiddleware:
    """Refuse a body over its limit before reading it (by Content-Length) or while reading it (by count),
    with a problem document; a route's body is parsed only after it was read in full within the limit."""

    def __init__(self, app: ASGIApp, limit: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            detail = f"the body is {declared} bytes; at most {limit} are accepted here"
            await _problem(send, "body-too-large", detail, scope["path"])
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's body reading unchanged.
                    raise HTTPException(413, f"the body is more than {limit} bytes; at most {limit} are accepted here")
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _problem(send: Send, slug: str, detail: str, instance: str) -> None:
    body = problems.body(slug, detail, instance)
    status = problems.TYPES[slug][0]
    headers = [(b"content-type", problems.MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))  # the unread body must not be taken for the next request
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ObserveMiddleware:
    """Request id, one JSON access-log line per request, metrics, and the token's last use."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        sink: Callable[[str], Any] | None,
        on_success: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.sink = sink  # where access-log lines go (None: no access log)
        self.on_success = on_success

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        status, sent = 500, 0

        async def observed(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif kind == "http.response.body" and scope["method"] != "HEAD":
                sent += len(message.get("body", b""))
            elif kind == "http.response.zerocopysend":
                sent += int(message.get("count", 0))
                self.metrics.sendfile.inc(int(message.get("count", 0)))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.seconds.labels(route).observe(seconds)
            self.metrics.bytes.labels(route).inc(sent)
            principal = (scope.get("state") or {}).get("principal")
            if self.sink is not None:
                self.sink(_access_line(scope, request_id, status, sent, seconds, principal))
            if status < 400 and principal is not None and self.on_success is not None:
                self.on_success(principal)


def _access_line(scope: Scope, request_id: str, status: int, sent: int, seconds: float, principal: Any) -> str:
    client = scope.get("client") or ("", 0)
    record = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": "info",
        "message": "request",
        "request_id": request_id,
        "method": scope["method"],
        "path": scope["path"],  # never the query string or headers: a token could be in them
        "status": status,
        "bytes": sent,
        "ms": round(seconds * 1000, 2),
        "client": client[0],
        "token": (principal or {}).get("id") if isinstance(principal, dict) else None,
    }
    return json.dumps(record, sort_keys=True) + "\n"
