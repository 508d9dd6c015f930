"""A byte region of a verified file as an HTTP response: the whole appliance, or one wheel inside it.

Strong ETag (the sha256 of the bytes), Content-Length, one Range with If-Range, If-None-Match (304),
HEAD. The body goes out with sendfile when the server offers ``http.response.zerocopysend``
(zerocopy.py), else in 1 MiB preads in worker threads; behind nginx, ``X-Accel-Redirect`` hands a
whole file to nginx instead (docs/serve.md).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chiron.service.ranges import ByteRange, Unsatisfiable, etag, if_range_holds, none_match, parse_range
from chiron.service.zerocopy import EXTENSION

CHUNK = 1 << 20
SMALL = 256 << 10  # a body this small is one pread in the event loop (from the page cache: microseconds)
IMMUTABLE = "public, max-age=31536000, immutable"


class RegionResponse(Response):
    """``length`` bytes at ``offset`` of the descriptor ``fd`` (owned: closed when the response ends)."""

    def __init__(
        self,
        request: Request,
        *,
        fd: int | None,
        offset: int,
        length: int,
        sha256: str,
        media_type: str,
        filename: str | None = None,
        cache_control: str = IMMUTABLE,
        accel: str | None = None,
    ) -> None:
        self.background = None
        self.body = b""
        self._fd, self._offset, self._size = fd, offset, length
        self._head = request.method == "HEAD"
        tag = etag(sha256)
        headers = {"etag": tag, "cache-control": cache_control, "accept-ranges": "bytes", "content-type": media_type}
        if filename:
            headers["content-disposition"] = f'attachment; filename="{filename}"'
        self._range: ByteRange | None = None
        if accel is not None:
            # nginx serves the file (and its ranges) from the internal location; no body from here.
            self.status_code, self._send_body = 200, False
            headers["x-accel-redirect"] = accel
            headers.pop("accept-ranges")
        elif none_match(request.headers.get("if-none-match"), tag):
            self.status_code, self._send_body = 304, False
        else:
            self.status_code, self._send_body = 200, not self._head
            try:
                wanted = parse_range(request.headers.get("range"), length)
            except Unsatisfiable:
                wanted, self.status_code, self._send_body = None, 416, False
                headers["content-range"] = f"bytes */{length}"
                headers["content-length"] = "0"
            if wanted is not None and if_range_holds(request.headers.get("if-range"), tag):
                self._range, self.status_code = wanted, 206
                headers["content-range"] = wanted.content_range(length)
            if self.status_code != 416:
                headers["content-length"] = str(self._range.length if self._range else length)
        if self.status_code == 304:
            headers.pop("content-type")
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    @property
    def sent_range(self) -> tuple[int, int]:
        """(offset in the file, byte count) of the body."""
        if self._range is not None:
            return self._offset + self._range.start, self._range.length
        return self._offset, self._size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self._send_body or self._fd is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            offset, count = self.sent_range
            if count <= SMALL:  # cheaper than sendfile's set-up or a worker-thread hop
                data = os.pread(self._fd, count, offset)
                if len(data) != count:
                    raise OSError(f"file ended {count - len(data)} bytes early")
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
            if EXTENSION in (scope.get("extensions") or {}):
                with os.fdopen(self._fd, "rb", buffering=0, closefd=False) as f:
                    await send({"type": EXTENSION, "file": f, "offset": offset, "count": count, "more_body": False})
                return
            await _race(functools.partial(_stream, send, self._fd, offset, count), functools.partial(_gone, receive))
        finally:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a response built but never sent (an error after it was made)
        self._close()


async def _stream(send: Send, fd: int, offset: int, count: int) -> None:
    pos, end = offset, offset + count
    while pos < end:
        data = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, end - pos), pos)
        if not data:
            raise OSError(f"file ended {end - pos} bytes early")  # shrank: the connection is cut, never padded
        await send({"type": "http.response.body", "body": data, "more_body": True})
        pos += len(data)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _race(*tasks: Callable[[], Awaitable[None]]) -> None:
    """Run until the first task ends (the body is sent, or the client disconnected)."""
    async with anyio.create_task_group() as tg:

        async def first(task: Callable[[], Awaitable[None]]) -> None:
            await task()
            tg.cancel_scope.cancel()

        for task in tasks:
            tg.start_soon(first, task)
