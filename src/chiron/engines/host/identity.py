"""The host's own identity: an Ed25519 key and a host id in ``STATE/identity/``, made at the first install.

``host-key.pem`` (PKCS#8, mode 0600) and ``host.json`` (the host id and the public key). The key signs
the host's install receipts (``chiron.engines.receipts``); a server accepts them once an admin approved
this key by its fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from chiron.core.fs import write_atomic, write_private
from chiron.errors import ChironError, HostStateError, UsageError

HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KEY_PREFIX = "ed25519:"


def key_text(raw: bytes) -> str:
    return KEY_PREFIX + base64.b64encode(raw).decode()


def fingerprint(raw: bytes) -> str:
    """sha256 of the raw public key: what an admin compares before approving a host."""
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Identity:
    host: str
    public: bytes
    directory: Path

    @property
    def key_sha256(self) -> str:
        return fingerprint(self.public)

    def as_dict(self) -> dict[str, str]:
        return {"host": self.host, "key": key_text(self.public), "key_sha256": self.key_sha256}


def identity_dir(state: Path) -> Path:
    return state / "identity"


def load_identity(state: Path) -> Identity | None:
    """The host's identity, None if it has none yet; HostStateError if its files do not agree."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    d = identity_dir(state)
    key_file, host_file = d / "host-key.pem", d / "host.json"
    if not key_file.exists() and not host_file.exists():
        return None
    try:
        key = load_pem_private_key(key_file.read_bytes(), password=None)
        info = json.loads(host_file.read_text())
        host = str(info["host"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HostStateError(
            f"{d}: the host identity is damaged ({exc})",
            hint="restore it from backup; a new key must be approved on the server again",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HostStateError(f"{key_file}: not an Ed25519 private key")
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if info.get("key") != key_text(public):
        raise HostStateError(f"{host_file}: names another key than {key_file} holds (mixed up or tampered)")
    return Identity(host, public, d)


def _host_json(identity: Identity) -> bytes:
    return (json.dumps(identity.as_dict(), indent=2, sort_keys=True) + "\n").encode()


def ensure_identity(state: Path, host: str | None = None) -> Identity:
    """The host's identity, made (key and id) the first time; ``host`` names it (default: hostname).

    ``host`` may rename an identity until its first receipt (``seq.json``), never after."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    if host is not None and not HOST_ID.match(host):
        raise UsageError(f"host id '{host}': use letters, digits, '.', '_' and '-' (at most 128)")
    existing = load_identity(state)
    if existing is not None:
        if host is None or host == existing.host:
            return existing
        if (existing.directory / "seq.json").exists():  # a server may know it by that name: it stays
            raise UsageError(
                f"this host is already '{existing.host}' (its key is in {existing.directory})",
                hint="drop --host-id, or move that directory away to start over (the server must approve again)",
            )
        # Named by default at install and no receipt sent yet: the first receipt may still name it.
        renamed = Identity(host, existing.public, existing.directory)
        write_atomic(existing.directory / "host.json", _host_json(renamed))
        return renamed
    host = host or socket.gethostname().split(".")[0]
    if not HOST_ID.match(host):
        raise UsageError(f"host id '{host}': use letters, digits, '.', '_' and '-' (at most 128)")
    d = identity_dir(state)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    write_private(d / "host-key.pem", pem)
    identity = Identity(host, public, d)
    write_atomic(d / "host.json", _host_json(identity))
    return identity


def key_raw(text: str) -> bytes:
    """The 32 raw bytes of an ``ed25519:BASE64`` public key; UsageError if it is not one."""
    if not text.startswith(KEY_PREFIX):
        raise UsageError(f"key {text[:40]!r}: not an ed25519:BASE64 public key")
    try:
        raw = base64.b64decode(text.removeprefix(KEY_PREFIX), validate=True)
    except ValueError:
        raise UsageError("key: not valid base64") from None
    if len(raw) != 32:
        raise UsageError(f"key: {len(raw)} bytes, an Ed25519 public key has 32")
    return raw


def identity_at_install(state: Path) -> list[str]:
    """Make the host's identity at its first install; the notices to print. A failure here (an odd
    hostname, a damaged identity directory) must not undo a good install: it is a notice, and
    ``chiron receipt`` makes or names the problem later."""
    try:
        existing = load_identity(state)
        ident = existing or ensure_identity(state)
    except (ChironError, OSError) as exc:
        message = exc.diagnostics() if isinstance(exc, ChironError) else f"{exc.filename or state}: {exc.strerror}"
        return [f"no host key made ({message}): 'chiron receipt --host-id NAME' makes it later"]
    if existing is not None:
        return []
    return [
        f"host key made: {ident.host} key sha256 {ident.key_sha256} "
        f"(a site's chiron serve accepts this host's receipts once an admin approves it: "
        f"chiron serve hosts approve {ident.host} --key-sha256 {ident.key_sha256})"
    ]
