"""The one HTTP client of chiron: a URL (or a local path) opened for reading, with a Range for a
resumed download, and every failure an ArtifactError naming the URL."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from chiron.errors import ArtifactError


class Response:
    def __init__(self, fobj: object) -> None:
        self._f = fobj

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self._f, "close", None)
        if close:
            close()

    def read(self, n: int) -> bytes:
        data: bytes = self._f.read(n)  # type: ignore[attr-defined]
        return data


def open_url(url: str, what: str, offset: int = 0) -> tuple[Response, bool]:
    """The response for ``url`` and whether it continues at ``offset`` (a 206 for our Range)."""
    if "://" not in url:
        try:
            return Response(Path(url).open("rb")), False
        except OSError as exc:
            raise ArtifactError(f"{what}: cannot open {url}: {exc.strerror}") from None
    if not url.startswith(("http://", "https://", "file://")):
        raise ArtifactError(f"{what}: unsupported URL scheme in {url}")
    headers = {"User-Agent": "chiron"}
    if offset and url.startswith(("http://", "https://")):
        headers["Range"] = f"bytes={offset}-"
    try:
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
        resp = urllib.request.urlopen(req, timeout=120)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix of what is served now
            return open_url(url, what, 0)
        raise ArtifactError(f"{what}: {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArtifactError(
            f"{what}: cannot fetch {url}: {reason}", hint="check the index URL and that the host is reachable"
        ) from None
    status = getattr(resp, "status", 200)
    if offset and status == 206:
        if str(resp.headers.get("Content-Range", "")).startswith(f"bytes {offset}-"):
            return Response(resp), True
        resp.close()  # a part other than the one asked for: ask for the whole file instead
        return open_url(url, what, 0)
    return Response(resp), False
