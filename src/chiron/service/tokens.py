"""API tokens: made from 256 random bits, shown once, stored only as a sha256, compared in constant time.

A token reads ``chiron_<id>_<secret>``. The id is public (it names the token in ``token list``, logs
and ``revoke``) and finds the stored row; the secret is never stored, only its sha256. A 256-bit
random secret needs no slow hash: nothing can be guessed from the digest. Scopes: ``read`` (index,
files, appliances, deltas), ``report`` (receipts, enrolment), ``admin`` (everything, fleet, jobs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

SCOPES = ("read", "report", "admin")
_TOKEN = re.compile(r"^chiron_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewToken:
    id: str
    secret_sha256: str
    text: str  # shown to the operator once, never stored


def new_token() -> NewToken:
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return NewToken(token_id, digest(secret), f"chiron_{token_id}_{secret}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    m = _TOKEN.match(text.strip())
    return (m.group(1), m.group(2)) if m else None


def matches(secret: str, stored_sha256: str) -> bool:
    """Whether ``secret`` is the one whose sha256 was stored; constant time in the digest."""
    return hmac.compare_digest(digest(secret), stored_sha256)


def allows(granted: set[str], needed: str) -> bool:
    """``admin`` includes every scope; the others only themselves."""
    return needed in granted or "admin" in granted


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes, validated and in canonical order; ValueError names a wrong one."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)} (use {', '.join(SCOPES)})")
    if not scopes:
        raise ValueError(f"give at least one scope ({', '.join(SCOPES)})")
    return [s for s in SCOPES if s in scopes]
