"""Zero-copy file bodies under uvicorn: the ASGI ``http.response.zerocopysend`` extension.

uvicorn (pinned in requirements/tool-constraints.txt) implements neither ``zerocopysend`` nor
``pathsend``, so a file body would be read into Python and written back, one copy each way. This
outermost middleware offers the extension when the connection is uvicorn's h11 protocol over plain
TCP: the response's headers go out as usual, then ``loop.sendfile`` hands the byte range to the
kernel (``os.sendfile``), and h11 is told about the bytes through ``send_with_data_passthrough``,
the API h11 provides for exactly this, so its Content-Length accounting and keep-alive stay right.

It relies on uvicorn's per-request object (``conn``, ``transport``, ``flow``, ``disconnected``); when
any of that is missing (another server, another uvicorn, TLS, a test client) the extension is
simply not offered and responses stream their bytes instead (see responses.py). ADR 0010 has the
measurements that justify it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXTENSION = "http.response.zerocopysend"


class _Piece:
    """Stands for ``count`` bytes in h11's body accounting; the kernel sends the real ones."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def _cycle(send: Send) -> Any:
    """uvicorn's h11 request/response cycle behind ``send``, when zero-copy can be used on it."""
    cycle = getattr(send, "__self__", None)
    if cycle is None or type(cycle).__module__ != "uvicorn.protocols.http.h11_impl":
        return None
    if not all(hasattr(cycle, a) for a in ("conn", "transport", "flow", "disconnected", "scope")):
        return None
    transport = cycle.transport
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("socket") is None:
        return None  # TLS: the kernel cannot encrypt; stream instead
    mode = getattr(transport, "_sendfile_compatible", None)
    return cycle if mode is not None and mode.name == "TRY_NATIVE" else None


class ZeroCopyMiddleware:
    """Wrap the whole application (outside Starlette's own middleware, which hides uvicorn's send)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # CHIRON_SERVE_ZEROCOPY=0 turns it off (to measure it, or to rule it out when diagnosing).
        self.enabled = os.environ.get("CHIRON_SERVE_ZEROCOPY", "1") != "0"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = _cycle(send) if scope["type"] == "http" and self.enabled else None
        if cycle is None:
            await self.app(scope, receive, send)
            return
        scope = {**scope, "extensions": {**(scope.get("extensions") or {}), EXTENSION: {}}}
        sock = cycle.transport.get_extra_info("socket")

        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                _cork(sock, True)  # the headers leave with the first body bytes, in one segment
            if kind != EXTENSION:
                await send(message)
            elif await _sendfile(cycle, message):
                await send({"type": "http.response.body", "body": b"", "more_body": bool(message.get("more_body"))})
            if kind in ("http.response.body", EXTENSION) and not message.get("more_body"):
                _cork(sock, False)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            _cork(sock, False)


def _cork(sock: Any, on: bool) -> None:
    """TCP_CORK, as nginx's tcp_nopush: a response's header and body writes become full segments."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)


async def _sendfile(cycle: Any, message: Message) -> bool:
    """Send ``count`` bytes at ``offset`` of ``file`` on the cycle's socket; False if the client left."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return False
    import h11

    count = int(message["count"])
    piece = _Piece(count)
    transport = cycle.transport
    pieces = cycle.conn.send_with_data_passthrough(h11.Data(data=piece))  # type: ignore[arg-type]
    pieces = pieces or []
    try:
        for part in pieces:
            if part is not piece:
                transport.write(part)
            elif count:
                loop = asyncio.get_running_loop()
                sent = await loop.sendfile(transport, message["file"], int(message["offset"]), count, fallback=True)
                if sent != count:
                    raise ConnectionError(f"sent {sent} of {count} bytes")
    except (OSError, RuntimeError):
        # The client went away (or the socket failed) part-way: h11 already counted the whole body,
        # so this connection cannot carry another response. Close it quietly, as uvicorn would.
        cycle.disconnected = True
        with contextlib.suppress(Exception):
            transport.close()
        return False
    return True
