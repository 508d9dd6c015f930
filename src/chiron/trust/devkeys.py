"""Throw-away development keys: one Ed25519 key per role and a signed root v1 (never for production)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, Root

from chiron.core.fs import private_dir, write_atomic, write_private
from chiron.errors import UsageError
from chiron.trust.ceremony import expires_at
from chiron.trust.metadata import ONLINE_ROLES, fingerprint, to_bytes
from chiron.trust.sshsig import allowed_signers_line


@dataclass(frozen=True)
class DevKeys:
    """What ``chiron keys init`` made."""

    directory: Path
    root_path: Path
    fingerprint: str
    keyids: dict[str, str]


def init_dev_keys(directory: Path, *, root_expires: timedelta, now: datetime, force: bool = False) -> DevKeys:
    """Make a throw-away Ed25519 key per role (PEM, 0600) and a signed root v1 naming them.

    The directory is made 0700; an existing one others can write is refused (``private_dir``). Each
    key is written through an unpredictable temporary name and renamed over its final name, which
    replaces a symlink planted there instead of writing through it.
    """
    expires = expires_at(now, root_expires, "--root-expires")
    created = not directory.exists()
    directory = private_dir(directory, "key directory")
    existing = [p.name for p in directory.iterdir() if p.suffix == ".pem" or p.name == "1.root.json"]
    if existing and not force:
        raise UsageError(
            f"{directory}: already holds keys ({', '.join(sorted(existing))})",
            hint="choose an empty directory, or pass --force to replace them",
        )
    written: list[Path] = []
    try:
        root_path, data, keyids = _write_keys(directory, expires, written)
    except BaseException:
        # Nothing half-made: a key set is whole or absent (a full disk, an interrupt).
        if not force:
            for path in written:
                path.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    directory.rmdir()
        raise
    return DevKeys(directory, root_path, fingerprint(data), keyids)


def _write_keys(directory: Path, expires: datetime, written: list[Path]) -> tuple[Path, bytes, dict[str, str]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    root = Root(expires=expires, consistent_snapshot=False)
    signers: dict[str, CryptoSigner] = {}
    keyids: dict[str, str] = {}
    for role in ("root", *ONLINE_ROLES):
        priv = ed25519.Ed25519PrivateKey.generate()
        pem = priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        written.append(directory / f"{role}.pem")
        write_private(directory / f"{role}.pem", pem)
        public = SSlibKey.from_crypto(priv.public_key())
        root.add_key(public, role)
        signers[role] = CryptoSigner(priv, public)
        keyids[role] = public.keyid
    md = Metadata(root)
    md.sign(signers["root"])
    data = to_bytes(md)
    root_path = directory / "1.root.json"
    written.append(root_path)
    write_atomic(root_path, data)
    allowed = allowed_signers_line("chiron", "chiron-appliance", signers["targets"].public_key)
    written.append(directory / "allowed_signers")
    write_atomic(directory / "allowed_signers", allowed.encode())
    return root_path, data, keyids
