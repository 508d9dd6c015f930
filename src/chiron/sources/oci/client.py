"""The registry client: manifests, blobs (pushed from regions of a file, fetched resumably and hashed
as they arrive), tags and referrers, with every failure one line naming the registry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from chiron.core.fs import fsync_dir
from chiron.errors import EnvironmentProblem, UsageError, VerificationError
from chiron.sources.oci.auth import load_credentials
from chiron.sources.oci.ref import (
    DIGEST,
    INDEX,
    MANIFEST,
    MAX_MANIFEST,
    Access,
    Manifest,
    digest_of,
    fallback_tag,
    is_loopback,
)
from chiron.sources.oci.transport import (
    OrasRegistry,
    Region,
    read_bounded,
    registry_message,
    rehash,
    short,
    stream_into,
)


class Registry:
    """One registry host, reached once its scheme (https, or http where allowed) is settled."""

    def __init__(self, host: str, access: Access | None = None) -> None:
        self.host = host
        self.access = access or Access()
        if self.access.ca_file is not None and not self.access.ca_file.is_file():
            raise UsageError(f"--ca-file {self.access.ca_file}: no such file")
        self.credentials = load_credentials(host, self.access.authfile)
        verify: bool | str = str(self.access.ca_file) if self.access.ca_file else True
        self._oras = OrasRegistry(host, verify, self.credentials)
        self._base: str | None = None
        self.fetched_bytes = 0
        self._count = threading.Lock()  # blobs are fetched from several threads

    # ------------------------------------------------------------ requests and their failures

    @property
    def base(self) -> str:
        if self._base is None:
            self._base = self._ping()
        return self._base

    def _ping(self) -> str:
        """https, or plain http where that is allowed and https is not spoken (GET /v2/, the API check)."""
        plain_ok = self.access.insecure or is_loopback(self.host)
        try:
            self._check_api(self._raw("GET", f"https://{self.host}/v2/"))
            return f"https://{self.host}"
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError) as exc:
            if not plain_ok:
                raise self._transport_error(exc) from None
            first = exc
        except requests.exceptions.RequestException as exc:
            raise self._transport_error(exc) from None
        try:
            self._check_api(self._raw("GET", f"http://{self.host}/v2/"))
        except (requests.exceptions.RequestException, EnvironmentProblem):
            raise self._transport_error(first) from None  # the TLS failure says more than the retry
        return f"http://{self.host}"

    def _raw(self, method: str, url: str, **kw: Any) -> requests.Response:
        response: requests.Response = self._oras.do_request(url, method, **kw)
        return response

    def _check_api(self, response: requests.Response) -> None:
        if response.status_code not in (200, 401) and "Docker-Distribution-Api-Version" not in response.headers:
            raise EnvironmentProblem(
                f"registry {self.host}: does not serve the OCI distribution API (GET /v2/ answered "
                f"HTTP {response.status_code})",
                hint="give the registry's own host and port",
            )

    def _transport_error(self, exc: Exception) -> EnvironmentProblem:
        text = str(exc)
        if isinstance(exc, requests.exceptions.SSLError):
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                return EnvironmentProblem(
                    f"registry {self.host}: its TLS certificate is not trusted (certificate verify failed)",
                    hint="give the site's CA certificate with --ca-file FILE",
                )
            return EnvironmentProblem(
                f"registry {self.host}: TLS failed ({short(text)})",
                hint="plain HTTP is used only on loopback or with --insecure",
            )
        if isinstance(exc, requests.exceptions.Timeout):
            return EnvironmentProblem(f"registry {self.host}: timed out", hint="check the network and run again")
        return EnvironmentProblem(
            f"registry {self.host}: cannot connect ({short(text)})",
            hint="check the address and that the registry runs",
        )

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """``method`` on ``/v2/PATH``; transport failures and refused credentials become one-line errors."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base}/v2/{path}"
        try:
            response = self._raw(method, url, **kw)
        except requests.exceptions.RequestException as exc:
            raise self._transport_error(exc) from None
        if response.status_code == 401:
            raise self._auth_error()
        if response.status_code == 403:
            raise EnvironmentProblem(
                f"registry {self.host}: denied {method} {path.split('?')[0]}{registry_message(response)}",
                hint="the account needs pull (and for publish, push) rights on the repository",
            )
        return response

    def _auth_error(self) -> EnvironmentProblem:
        c = self.credentials
        if c.basic:
            return EnvironmentProblem(
                f"registry {self.host}: refused the credentials for {self.host} from {c.source} (HTTP 401)",
                hint="log in again (docker login / podman login) or fix the auth file",
            )
        looked = ", ".join(str(p) for p in c.searched) or "no auth file exists"
        return EnvironmentProblem(
            f"registry {self.host}: requires credentials and there are none for {self.host} (looked in: {looked})",
            hint="log in with docker login / podman login, or give --authfile FILE",
        )

    def _fail(self, response: requests.Response, what: str) -> EnvironmentProblem:
        return EnvironmentProblem(
            f"registry {self.host}: {what} answered HTTP {response.status_code}{registry_message(response)}"
        )

    # ------------------------------------------------------------ manifests

    def get_manifest(self, repository: str, reference: str, accept: tuple[str, ...] = (MANIFEST,)) -> Manifest | None:
        """The manifest named by a tag or digest (None when there is none), read with a size bound and,
        when a digest names it, checked against that digest."""
        response = self.request("GET", f"{repository}/manifests/{reference}", headers={"Accept": ", ".join(accept)})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"GET manifest {repository}:{reference}")
        raw = read_bounded(response, MAX_MANIFEST, f"registry {self.host}: manifest {repository}:{reference}")
        digest = digest_of(raw)
        if DIGEST.fullmatch(reference) and digest != reference:
            raise VerificationError(
                [f"registry {self.host}: served a manifest for {repository}@{reference} that hashes to {digest}"]
            )
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(raw, media, digest)

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> requests.Response:
        response = self.request(
            "PUT", f"{repository}/manifests/{reference}", data=raw, headers={"Content-Type": media_type}
        )
        if response.status_code not in (200, 201):
            raise self._fail(response, f"PUT manifest {repository}:{reference}")
        got = response.headers.get("Docker-Content-Digest")
        if got and got != digest_of(raw):
            raise VerificationError([f"registry {self.host}: stored {repository}:{reference} as {got}, not as sent"])
        return response

    def tags(self, repository: str) -> list[str]:
        """The repository's tags (best effort: for hints in error messages)."""
        with contextlib.suppress(Exception):
            response = self.request("GET", f"{repository}/tags/list")
            if response.status_code == 200:
                return sorted(str(t) for t in (response.json().get("tags") or []))
        return []

    # ------------------------------------------------------------ blobs

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.request("HEAD", f"{repository}/blobs/{digest}")
        return response.status_code == 200

    def push_blob(
        self, repository: str, digest: str, body: Callable[[], Region], mount_from: str | None = None
    ) -> bool:
        """Upload a blob unless the repository has it (or a mount from ``mount_from`` gives it);
        True when bytes were sent. The registry checks the digest when the upload completes."""
        if self.has_blob(repository, digest):
            return False
        query = f"?mount={digest}&from={mount_from}" if mount_from else ""
        start = self.request("POST", f"{repository}/blobs/uploads/{query}", headers={"Content-Length": "0"})
        if start.status_code == 201:
            return False  # mounted from another repository of the same registry
        location = start.headers.get("Location")
        if start.status_code != 202 or not location:
            raise self._fail(start, f"POST upload {repository}")
        if not location.startswith("http"):
            location = f"{self.base}{location}"
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        region = body()
        try:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(region))}
            done = self.request("PUT", url, data=region, headers=headers)
        finally:
            region.close()
        if done.status_code != 201:
            raise self._fail(done, f"PUT blob {digest} to {repository}")
        return True

    def fetch_blob(self, repository: str, digest: str, size: int, dest: Path, what: str) -> int:
        """Download a blob into ``dest`` (named by its digest), resuming ``dest.partial``; every byte is
        hashed as it arrives. Returns the bytes transferred. A blob whose bytes do not hash to its
        digest is refused, naming ``what``; one that ends early keeps its partial file for the next run.
        """
        partial = dest.with_name(dest.name + ".partial")
        label = f"{self}: blob {digest} ({what})"
        fetched = 0
        for _attempt in range(2):  # a resumed partial that turns out bad is fetched once more, whole
            h = hashlib.sha256()
            have = rehash(partial, h, size) if partial.exists() else 0
            resumed = have > 0
            if have < size:
                response, restarted = self._open_blob(repository, digest, have, what)
                if restarted:
                    partial.unlink(missing_ok=True)
                    h, have = hashlib.sha256(), 0
                got = stream_into(response, partial, h, size - have, label)
                with self._count:
                    self.fetched_bytes += got
                fetched += got
                have += got
            if have < size:
                raise EnvironmentProblem(
                    f"{label}: the download broke off after {have} of {size} bytes",
                    hint="run the same command again: it resumes where it stopped",
                )
            if "sha256:" + h.hexdigest() == digest:
                os.replace(partial, dest)
                fsync_dir(dest.parent)
                return fetched
            partial.unlink(missing_ok=True)
            if not resumed:
                break
        raise VerificationError(
            [f"registry {self.host}: served wrong bytes for blob {digest} ({what}) of {repository}"],
            hint="its bytes do not hash to the digest; the registry's storage is damaged or tampered with",
        )

    def get_blob_bytes(self, repository: str, digest: str, limit: int, what: str) -> bytes:
        """A small blob (a config, a signature), read with a bound and checked against its digest."""
        response = self.request("GET", f"{repository}/blobs/{digest}", stream=True)
        if response.status_code != 200:
            response.close()
            raise self._fail(response, f"GET blob {digest} ({what})")
        raw = read_bounded(response, limit, f"{self}: blob {digest} ({what})")
        with self._count:
            self.fetched_bytes += len(raw)
        if digest_of(raw) != digest:
            raise VerificationError(
                [f"registry {self.host}: served wrong bytes for blob {digest} ({what}) of {repository}"],
                hint="its bytes do not hash to the digest; the registry's storage is damaged or tampered with",
            )
        return raw

    def _open_blob(self, repository: str, digest: str, have: int, what: str) -> tuple[requests.Response, bool]:
        """The blob's response from byte ``have``; True when the registry sent all of it instead."""
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = self.request("GET", f"{repository}/blobs/{digest}", headers=headers, stream=True)
        if response.status_code == 200:
            return response, have > 0
        if response.status_code == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            return response, False
        response.close()
        raise self._fail(response, f"GET blob {digest} ({what})")

    def __str__(self) -> str:
        return f"registry {self.host}"

    # ------------------------------------------------------------ referrers

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]]:
        """The descriptors of the artifacts that name ``digest`` as their subject: the referrers API,
        else the tag-schema fallback (``sha256-HEX``), else none."""
        response = self.request("GET", f"{repository}/referrers/{digest}", headers={"Accept": INDEX})
        if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(INDEX):
            doc = json.loads(read_bounded(response, MAX_MANIFEST, f"{self}: referrers of {digest}"))
        else:
            index = self.get_manifest(repository, fallback_tag(digest), (INDEX,))
            if index is None:
                return []
            doc = index.json()
        found = doc.get("manifests") if isinstance(doc, dict) else None
        return [d for d in found or [] if isinstance(d, dict) and DIGEST.fullmatch(str(d.get("digest", "")))]

    def attach(self, repository: str, raw: bytes, entry: dict[str, Any]) -> str:
        """Push a manifest whose ``subject`` names another; where the registry does not index it itself
        (no ``OCI-Subject`` answer), add it to the subject's tag-schema index. Returns its digest."""
        digest = digest_of(raw)
        response = self.put_manifest(repository, digest, raw, MANIFEST)
        if response.headers.get("OCI-Subject"):
            return digest
        subject = json.loads(raw)["subject"]["digest"]
        tag = fallback_tag(subject)
        current = self.get_manifest(repository, tag, (INDEX,))
        doc: dict[str, Any] = current.json() if current else {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
        listed = doc.get("manifests")
        manifests = [m for m in listed or [] if isinstance(m, dict) and m.get("digest") != digest]
        doc = {**doc, "manifests": [*manifests, {**entry, "mediaType": MANIFEST, "digest": digest, "size": len(raw)}]}
        self.put_manifest(repository, tag, json.dumps(doc, sort_keys=True).encode(), INDEX)
        return digest


@contextlib.contextmanager
def opened(host: str, access: Access | None) -> Iterator[Registry]:
    registry = Registry(host, access)
    try:
        registry.base  # noqa: B018 - settle the scheme (and report an unreachable registry) before any thread starts
        yield registry
    finally:
        registry._oras.session.close()


def open_region(path: Path, offset: int, length: int) -> Callable[[], Region]:
    return lambda: Region(path, offset, length)
