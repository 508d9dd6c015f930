"""OCI references (``oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]``), media types, descriptors."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.errors import UsageError, VerificationError

SCHEME = "oci://"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
MAX_MANIFEST = 4 << 20  # what distribution itself accepts

_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::[0-9]{1,5})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"oci://(?P<host>{_HOST})/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """``oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]``."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return (
            f"{SCHEME}{self.host}/{self.repository}"
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    @property
    def reference(self) -> str:
        """What the manifest URL names: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_oci(text: str) -> bool:
    return text.startswith(SCHEME)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0] + "]"
    return name in ("localhost", "[::1]") or re.fullmatch(r"127(?:\.[0-9]{1,3}){3}", name) is not None


def parse_reference(text: str) -> Reference:
    """A reference as given on a command line; a UsageError naming the rule it breaks."""
    m = _REFERENCE.fullmatch(text)
    if m is None:
        raise UsageError(
            f"{text!r}: not an OCI reference",
            hint="write oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX], the repository in lower case",
        )
    return Reference(m["host"], m["repo"], m["tag"], m["digest"])


@dataclass(frozen=True)
class Access:
    """How to reach a registry: an auth file, a CA for its TLS certificate, plain HTTP allowed."""

    authfile: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VerificationError([f"manifest {self.digest}: not JSON ({exc})"]) from None
        if not isinstance(doc, dict):
            raise VerificationError([f"manifest {self.digest}: not a JSON object"])
        return doc


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def fallback_tag(digest: str) -> str:
    """The OCI tag-schema name under which referrers of ``digest`` are listed (``sha256-HEX``)."""
    return digest.replace(":", "-", 1)
