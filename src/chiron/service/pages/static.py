"""The pages' one stylesheet (the report's own), served by the service itself: no CDN, no fetch elsewhere."""

from __future__ import annotations

import functools
import hashlib

from fastapi import APIRouter, Request, Response

from chiron.engines.report.render import stylesheet
from chiron.service.ranges import etag, none_match

router = APIRouter(include_in_schema=False)


@functools.cache
def _css() -> tuple[bytes, str]:
    data = stylesheet().encode()
    return data, etag(hashlib.sha256(data).hexdigest())


@router.get("/ui/static/chiron.css")
async def css(request: Request) -> Response:
    data, tag = _css()
    headers = {"ETag": tag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if none_match(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="text/css; charset=utf-8", headers=headers)
