"""The one HTTP client of chiron: a URL (or a local path) opened for reading, with a Range for a
resumed download, and every failure an ArtifactError naming the URL.

Talking to a ``chiron serve`` (``chiron download``, ``upgrade URL``, ``receipt --server``) adds what a
client of an authenticated service needs (a ``Client``): a token (Bearer, or taken from the URL's
``__token__:TOKEN@`` user part, as pip and uv use it), a CA file for a site's own TLS certificates,
JSON requests, and RFC 9457 problem documents turned into one-line errors.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from chiron.errors import ArtifactError, ServerRefused, UsageError

READ_LIMIT = 64 << 20  # an index page or a small document; artifacts are streamed, never read whole
MAX_JSON = 16 << 20  # the largest JSON answer read from a chiron server


@dataclass(frozen=True)
class Client:
    """Credentials and trust for requests to a chiron server (the defaults fit a public index)."""

    token: str | None = None
    cafile: Path | None = None
    timeout: float = 120.0

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "chiron"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def context(self) -> ssl.SSLContext | None:
        if self.cafile is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--ca-file {self.cafile}: cannot use it as CA certificates: {exc}") from None


def with_url_credentials(url: str, client: Client | None) -> tuple[str, Client]:
    """Move a ``https://__token__:TOKEN@host/...`` user part into the client, so the token is sent as
    a header (urllib sends nothing for it) and never appears in messages."""
    client = client or Client()
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, client
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    token = unquote(parts.password or "") if parts.username == "__token__" else None
    if token is None:
        raise UsageError(f"{clean}: only the user __token__ is understood in a URL (https://__token__:TOKEN@host/)")
    return clean, client if client.token else replace(client, token=token)


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


def _problem(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """The server's own explanation of an error status: (": title: detail", the problem type URI)."""
    try:
        if "json" in (exc.headers.get("Content-Type") or ""):
            doc = json.loads(exc.read(64 << 10))
            if isinstance(doc, dict):
                text = ": ".join(str(doc[k]) for k in ("title", "detail") if doc.get(k))
                return (f": {text}" if text else ""), str(doc.get("type") or "")
    except (OSError, ValueError):
        pass
    return "", ""


def http_error(exc: urllib.error.HTTPError, url: str, what: str) -> Exception:
    """An error status as chiron's error: refused (exit 4) for 401/403/409, else an artifact error."""
    text, kind = _problem(exc)
    message = f"{what}: {url} answered HTTP {exc.code}{text}"
    if exc.code in (401, 403):
        hint = "pass a token with the needed scope (--token, or CHIRON_TOKEN)"
        return ServerRefused(message, problem_type=kind, hint=None if kind.endswith("-host") else hint)
    if exc.code == 409:
        return ServerRefused(message, problem_type=kind)
    return ArtifactError(message)


def _request(url: str, headers: Mapping[str, str], timeout: float, context: ssl.SSLContext | None = None) -> object:
    req = urllib.request.Request(url, headers={"User-Agent": "chiron", **headers})  # noqa: S310 - scheme checked by callers
    return urllib.request.urlopen(req, timeout=timeout, context=context)  # noqa: S310 - as above


def open_url(
    url: str,
    what: str,
    offset: int = 0,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 120,
    client: Client | None = None,
) -> tuple[Response, bool]:
    """The response for ``url`` and whether it continues at ``offset`` (a 206 for our Range). With a
    ``client`` (a chiron server): its token and CA, and its refusals as ServerRefused."""
    if "://" not in url:
        try:
            return Response(Path(url).open("rb")), False
        except OSError as exc:
            raise ArtifactError(f"{what}: cannot open {url}: {exc.strerror}") from None
    if not url.startswith(("http://", "https://", "file://")):
        raise ArtifactError(f"{what}: unsupported URL scheme in {url}")
    extra = dict(headers or {})
    context = None
    if client is not None:
        url, client = with_url_credentials(url, client)
        extra = {**client.headers(), **extra}
        timeout, context = client.timeout, client.context()
    if offset and url.startswith(("http://", "https://")):
        extra["Range"] = f"bytes={offset}-"
    try:
        resp = _request(url, extra, timeout, context)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix of what is served now
            return open_url(url, what, 0, headers=headers, timeout=timeout, client=client)
        if client is not None:
            raise http_error(exc, url, what) from None
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
        return open_url(url, what, 0, headers=headers, timeout=timeout, client=client)
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


def request(
    url: str,
    what: str,
    *,
    method: str = "GET",
    body: Any = None,
    client: Client | None = None,
    limit: int = MAX_JSON,
) -> tuple[int, dict[str, str], Any]:
    """One JSON request to a chiron server: (status, headers, parsed body). ``body`` is sent as JSON;
    an error status raises (with the server's problem title and detail in the message)."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{what}: {url} is not an http:// or https:// URL")
    url, client = with_url_credentials(url, client)
    headers = {**client.headers(), "Accept": "application/json, application/problem+json"}
    data = None
    if body is not None:
        data = json.dumps(body, sort_keys=True).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - scheme checked
    try:
        with urllib.request.urlopen(req, timeout=client.timeout, context=client.context()) as resp:  # noqa: S310
            raw = resp.read(limit + 1)
            status, got = resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        raise http_error(exc, url, what) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArtifactError(f"{what}: cannot reach {url}: {reason}", hint="check the URL and the network") from None
    if len(raw) > limit:
        raise ArtifactError(f"{what}: {url} answered with more than {limit} bytes of JSON")
    try:
        return status, got, json.loads(raw) if raw else None
    except ValueError:
        raise ArtifactError(f"{what}: {url} did not answer with JSON") from None


def head(url: str, what: str, *, client: Client | None = None) -> tuple[str, dict[str, str]]:
    """The final URL (after redirects) and the headers of ``url``, by a HEAD request; a server that does
    not answer HEAD (405, 501) gives ``url`` itself and no headers."""
    url, client = with_url_credentials(url, client)
    req = urllib.request.Request(url, headers=client.headers(), method="HEAD")  # noqa: S310
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{what}: {url} is not an http:// or https:// URL")
    try:
        with urllib.request.urlopen(req, timeout=client.timeout, context=client.context()) as resp:  # noqa: S310
            return resp.geturl(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        if exc.code in (405, 501):
            return url, {}
        raise http_error(exc, url, what) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArtifactError(f"{what}: cannot reach {url}: {reason}", hint="check the URL and the network") from None


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
