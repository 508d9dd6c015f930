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


def probe(url: str, timeout: float, limit: int = 65536) -> tuple[int, bytes]:
    """One GET of ``url`` for a live check: the status (an error status is an answer, not an
    exception) and at most ``limit`` bytes of the body. Never through a proxy: a live check asks the
    service on this host itself. OSError (refused, timed out, reset) when there is no answer."""
    import http.client

    if not url.startswith(("http://", "https://")):
        raise ArtifactError(f"live check: unsupported URL scheme in {url}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers={"User-Agent": "chiron-live-check"})  # noqa: S310 - scheme checked
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(limit)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read(limit)
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise OSError(str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)) from None
    except http.client.HTTPException as exc:
        raise OSError(f"not an HTTP answer ({type(exc).__name__})") from None
