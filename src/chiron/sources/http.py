"""The one HTTP client of chiron: a URL (or a local path) opened for reading, with a Range for a
resumed download, and every failure an ArtifactError naming the URL."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from chiron.errors import ArtifactError

READ_LIMIT = 64 << 20  # an index page or a small document; artifacts are streamed, never read whole


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


def _request(url: str, headers: Mapping[str, str], timeout: float) -> object:
    req = urllib.request.Request(url, headers={"User-Agent": "chiron", **headers})  # noqa: S310 - scheme checked by callers
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - as above


def open_url(
    url: str, what: str, offset: int = 0, *, headers: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[Response, bool]:
    """The response for ``url`` and whether it continues at ``offset`` (a 206 for our Range)."""
    if "://" not in url:
        try:
            return Response(Path(url).open("rb")), False
        except OSError as exc:
            raise ArtifactError(f"{what}: cannot open {url}: {exc.strerror}") from None
    if not url.startswith(("http://", "https://", "file://")):
        raise ArtifactError(f"{what}: unsupported URL scheme in {url}")
    extra = dict(headers or {})
    if offset and url.startswith(("http://", "https://")):
        extra["Range"] = f"bytes={offset}-"
    try:
        resp = _request(url, extra, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix of what is served now
            return open_url(url, what, 0, headers=headers, timeout=timeout)
        raise ArtifactError(f"{what}: {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArtifactError(
            f"{what}: cannot fetch {url}: {reason}", hint="check the index URL and that the host is reachable"
        ) from None
    status = getattr(resp, "status", 200)
    if offset and status == 206:
        if str(resp.headers.get("Content-Range", "")).startswith(f"bytes {offset}-"):  # type: ignore[attr-defined]
            return Response(resp), True
        Response(resp).close()  # a part other than the one asked for: ask for the whole file instead
        return open_url(url, what, 0, headers=headers, timeout=timeout)
    return Response(resp), False


def read_url(
    url: str, what: str, *, headers: Mapping[str, str] | None = None, timeout: float = 60, limit: int = READ_LIMIT
) -> bytes:
    """The whole body of ``url`` (an index page), refused past ``limit`` bytes."""
    resp, _ = open_url(url, what, headers=headers, timeout=timeout)
    with resp:
        try:
            data = resp.read(limit + 1)
        except (http.client.HTTPException, OSError) as exc:
            raise ArtifactError(f"{what}: reading {url} failed: {exc}") from None
    if len(data) > limit:
        raise ArtifactError(f"{what}: {url} is larger than {limit} bytes")
    return data


def probe(url: str, timeout: float = 30) -> tuple[int | None, str]:
    """Whether ``url`` can be reached: (HTTP status, "") when it answers, (None, reason) when not.

    Used to tell a network failure from a real answer after an external tool (pip) failed."""
    if not url.startswith(("http://", "https://")):
        return 200, ""  # a local path or file:// URL: nothing on a network to be down
    try:
        resp = _request(url, {"Cache-Control": "max-age=0"}, timeout)
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))
    Response(resp).close()
    return int(getattr(resp, "status", 200)), ""


def live_get(url: str, timeout: float, limit: int = 65536) -> tuple[int, bytes]:
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
