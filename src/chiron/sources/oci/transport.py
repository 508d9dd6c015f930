"""The HTTP underneath the registry client: oras-py's request loop as chiron needs it, request bodies
streamed from a region of a file, and bounded, hashed reads of responses."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import oras.provider
import requests

from chiron.errors import EnvironmentProblem, VerificationError
from chiron.sources.oci.auth import Credentials

CHUNK = 1 << 20
TIMEOUT = (30, 300)  # connect, and between two reads of a response


class OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's registry with two changes to its request loop, ``do_request``.

    oras-py retries every failed request five times, sleeping up to 81 s in between, so a wrong
    address or a refused certificate would take minutes to report; chiron fails at once and resumes
    on the next run instead. And it answers a ``Basic`` challenge (distribution with htpasswd) as well
    as a ``Bearer`` one, sending the credentials up front once the registry asked for them, so a
    streamed upload is not sent twice.
    """

    def __init__(self, host: str, tls_verify: bool | str, credentials: Credentials) -> None:
        super().__init__(hostname=host, insecure=False, tls_verify=tls_verify, auth_backend="token")
        self.chiron_credentials = credentials
        self.chiron_basic = False
        if credentials.basic:
            self.auth._basic_auth = credentials.basic  # the token flow trades them for a token
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        headers = dict(headers or {})
        if self.chiron_basic:
            headers["Authorization"] = f"Basic {self.chiron_credentials.basic}"
        else:
            headers.update(self.auth.get_auth_header())
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("basic"):
            if not self.chiron_credentials.basic or self.chiron_basic:
                return response
            self.chiron_basic = True
            headers["Authorization"] = f"Basic {self.chiron_credentials.basic}"
        else:
            # A 401 after a token means the token lacks the scope asked for now: always a fresh one.
            headers, changed = self.auth.authenticate_request(response, headers, refresh=True)
            if not changed:
                return response
        response.close()
        if data is not None and hasattr(data, "seek"):
            data.seek(0)
        return self._send(method, url, data, headers, json, stream)

    def _send(
        self, method: str, url: str, data: Any, headers: dict[str, str], js: Any, stream: bool
    ) -> requests.Response:
        response: requests.Response = self.session.request(
            method, url, data=data, json=js, headers=headers, stream=stream, verify=self._tls_verify, timeout=TIMEOUT
        )
        return response


class Region:
    """``length`` bytes of a file from ``offset``, as a request body streamed from disk."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._f = path.open("rb")
        self._offset, self._length, self._pos = offset, length, 0

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        n = left if n is None or n < 0 else min(n, left)
        data = os.pread(self._f.fileno(), n, self._offset + self._pos) if n else b""
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else self._length + pos)
        return self._pos

    def close(self) -> None:
        self._f.close()


def short(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    m = re.search(r"\[SSL[^\]]*\][^')\"]*|Connection refused|Name or service not known|timed out", text)
    return m.group(0).strip() if m else text[:160]


def registry_message(response: requests.Response) -> str:
    with contextlib.suppress(Exception):
        errors = json.loads(response.content[:65536]).get("errors") or []
        messages = [f"{e.get('code', '')}: {e.get('message', '')}" for e in errors if isinstance(e, dict)]
        if messages:
            return " (" + "; ".join(messages)[:300] + ")"
    return ""


def read_bounded(response: requests.Response, limit: int, what: str) -> bytes:
    chunks, total = [], 0
    for chunk in response.iter_content(CHUNK):
        total += len(chunk)
        if total > limit:
            response.close()
            raise VerificationError([f"{what}: more than {limit} bytes"])
        chunks.append(chunk)
    return b"".join(chunks)


def rehash(partial: Path, h: Any, size: int) -> int:
    """Feed a partial download's bytes to ``h``; a partial longer than the blob is discarded."""
    if partial.stat().st_size > size:
        partial.unlink()
        return 0
    have = 0
    with partial.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            have += len(chunk)
    return have


def stream_into(response: requests.Response, partial: Path, h: Any, limit: int, what: str) -> int:
    """Append the response body to ``partial`` while hashing it; at most ``limit`` bytes are taken."""
    got = 0
    try:
        with partial.open("ab") as f:
            try:
                for chunk in response.iter_content(CHUNK):
                    if got + len(chunk) > limit:
                        raise VerificationError([f"{what}: the registry sent more bytes than the blob's size"])
                    h.update(chunk)
                    f.write(chunk)
                    got += len(chunk)
            finally:
                f.flush()
                os.fsync(f.fileno())
    except requests.exceptions.RequestException as exc:
        raise EnvironmentProblem(
            f"{what}: the download broke off after {got} bytes ({short(str(exc))})",
            hint="run the same command again: it resumes where it stopped",
        ) from None
    finally:
        response.close()
    return got
