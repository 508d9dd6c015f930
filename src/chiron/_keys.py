"""Signing keys by URI, secrets for them, and offline ceremonies on root metadata.

Keys are securesystemslib private-key URIs (file2:, hsm:, awskms:, gcpkms:, azurekms:, hv:, gnupg:)
plus chiron's ``secret:`` scheme for stores that only hold secrets (``secret:env:VAR`` holds a PEM,
``secret:keyring:SERVICE/NAME`` reads the OS keyring). Private key material never leaves the
signer: ceremonies move only metadata files, each person adding one signature with ``chiron sign``.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)
from tuf.api.metadata import Metadata, Root

from chiron._trust import parse_root, to_bytes, write_atomic
from chiron.errors import SigningKeyError, UsageError

SECRET_SCHEME = "secret"  # noqa: S105 - a URI scheme name, not a secret


def _secret_handler(uri: str, secret_env: str | None) -> SecretsHandler:
    """Where a passphrase or PIN comes from: the named environment variable, else a prompt on a TTY."""

    def handler(what: str) -> str:
        if secret_env:
            value = os.environ.get(secret_env)
            if value is None:
                raise SigningKeyError(f"key {uri}: environment variable {secret_env} (its {what}) is not set")
            return value
        if sys.stdin.isatty():
            return getpass.getpass(f"{what} for {uri}: ")
        raise SigningKeyError(
            f"key {uri}: needs a {what} and no terminal is attached",
            hint='export VAR and set secret_env = "VAR" on the key in the spec (or pass --secret-env VAR to sign)',
        )

    return handler


def _load_pem(pem: bytes, uri: str, secret_env: str | None) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(pem, password=None)
    except TypeError:
        passphrase = _secret_handler(uri, secret_env)("passphrase").encode()
        try:
            return load_pem_private_key(pem, password=passphrase)
        except ValueError:
            raise SigningKeyError(f"key {uri}: wrong passphrase (the PEM could not be decrypted)") from None
    except ValueError:
        raise SigningKeyError(f"key {uri}: not a PEM private key") from None


class SecretStoreSigner(Signer):
    """A PEM private key kept in a store that only holds secrets; signs locally once fetched."""

    def __init__(self, inner: CryptoSigner) -> None:
        self._inner = inner

    @property
    def public_key(self) -> Key:
        return self._inner.public_key

    def sign(self, payload: bytes) -> Signature:
        return self._inner.sign(payload)

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: SecretsHandler | None = None
    ) -> SecretStoreSigner:
        pem = fetch_secret(priv_key_uri)
        priv = _load_pem(pem, priv_key_uri, None)
        derived = SSlibKey.from_crypto(priv.public_key())
        if derived.keyid != public_key.keyid:
            raise ValueError(f"the key in {priv_key_uri} is not key {public_key.keyid[:16]}...")
        return cls(CryptoSigner(priv, derived))


def fetch_secret(uri: str) -> bytes:
    """The PEM behind a ``secret:`` URI."""
    store, _, ref = uri.removeprefix(f"{SECRET_SCHEME}:").partition(":")
    if store == "env":
        value = os.environ.get(ref)
        if not value:
            raise SigningKeyError(f"key {uri}: environment variable {ref} is not set or empty")
        return value.encode()
    if store == "keyring":
        try:
            import keyring  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise SigningKeyError(
                f"key {uri}: the 'keyring' package is not installed", hint="pip install keyring"
            ) from None
        service, _, name = ref.partition("/")
        value = keyring.get_password(service, name)
        if value is None:
            raise SigningKeyError(f"key {uri}: no secret {name!r} in keyring service {service!r}")
        return str(value).encode()
    raise SigningKeyError(
        f"key {uri}: unknown secret store {store!r} (use secret:env:VAR or secret:keyring:SERVICE/NAME)"
    )


SIGNER_FOR_URI_SCHEME[SECRET_SCHEME] = SecretStoreSigner


def public_key_of(uri: str, secret_env: str | None = None) -> SSlibKey | None:
    """The public key of a locally held private key (file2:, secret:); None for remote backends."""
    scheme = uri.partition(":")[0]
    if scheme == "file2":
        path = Path(uri.partition(":")[2])
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"key {uri}: cannot read {path}: {exc.strerror}") from None
    elif scheme == SECRET_SCHEME:
        pem = fetch_secret(uri)
    else:
        return None
    return SSlibKey.from_crypto(_load_pem(pem, uri, secret_env).public_key())


def load_signer(uri: str, role: str, root: Root, keyid: str | None, secret_env: str | None = None) -> Signer:
    """A Signer for a private-key URI, tied to a key that root lists for ``role``."""
    allowed = root.roles[role].keyids
    local = public_key_of(uri, secret_env)
    if local is not None:
        if local.keyid not in allowed:
            raise SigningKeyError(
                f"key {uri} is not a {role} key of the root metadata (its keyid {local.keyid[:16]}... is not listed)",
                hint="use the key made for this role, or rotate the root to include it",
            )
        if uri.startswith("file2:"):
            # Loaded here rather than by securesystemslib so that encrypted PEM files work too.
            pem = Path(uri.partition(":")[2]).read_bytes()
            return CryptoSigner(_load_pem(pem, uri, secret_env), local)
        keyid = local.keyid
    if keyid is None:
        raise SigningKeyError(f'key {uri}: give keyid = "..." (which {role} key of the root this is)')
    if keyid not in allowed:
        raise SigningKeyError(f"key {uri}: keyid {keyid[:16]}... is not a {role} key of the root metadata")
    try:
        return Signer.from_priv_key_uri(uri, root.keys[keyid], _secret_handler(uri, secret_env))
    except SigningKeyError:
        raise
    except (ValueError, KeyError) as exc:
        raise SigningKeyError(f"key {uri}: {exc}") from None
    except OSError as exc:
        raise SigningKeyError(f"key {uri}: cannot open: {exc.strerror or exc}") from None
    except Exception as exc:  # backend libraries raise their own types (PyKCS11, boto, ...)
        raise SigningKeyError(f"key {uri}: the signing backend failed: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- ceremonies


@dataclass(frozen=True)
class SignatureStatus:
    """Who has signed a root file and who still must, for its own keys and (for N > 1) root N-1's."""

    version: int
    thresholds: dict[str, tuple[int, int]]  # "root vN" -> (valid signatures, threshold)
    missing: dict[str, list[str]]  # "root vN" -> keyids that have not signed

    @property
    def complete(self) -> bool:
        return all(have >= need for have, need in self.thresholds.values())

    def describe(self) -> str:
        parts = []
        for who, (have, need) in self.thresholds.items():
            text = f"{who} keys: {have} of {need} needed"
            if have < need:
                text += f" (not yet signed: {', '.join(k[:16] for k in self.missing[who])})"
            parts.append(text)
        return "; ".join(parts)


def signature_status(md: Metadata[Root], previous: Metadata[Root] | None) -> SignatureStatus:
    thresholds, missing = {}, {}
    for label, signer_root in ((f"root v{md.signed.version}", md), *(
        ((f"root v{previous.signed.version}", previous),) if previous is not None else ()
    )):  # fmt: skip
        role = signer_root.signed.roles[Root.type]
        valid = []
        for keyid in role.keyids:
            sig = md.signatures.get(keyid)
            if sig is None:
                continue
            try:
                signer_root.signed.keys[keyid].verify_signature(sig, md.signed_bytes)
                valid.append(keyid)
            except Exception:  # noqa: S112 - an invalid signature simply does not count
                continue
        thresholds[label] = (len(valid), role.threshold)
        missing[label] = [k for k in role.keyids if k not in valid]
    return SignatureStatus(md.signed.version, thresholds, missing)


def sign_file(path: Path, uri: str, keyid: str | None = None, secret_env: str | None = None) -> SignatureStatus | None:
    """Add one signature to a root metadata file (pending or not); written atomically."""
    try:
        md = Metadata.from_bytes(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except Exception as exc:
        raise UsageError(f"{path}: not TUF metadata: {exc}") from None
    if isinstance(md.signed, Root):
        candidates = set(md.signed.roles[Root.type].keyids)
        previous = _previous_root(path, md.signed.version)
        if previous is not None:
            candidates |= set(previous.signed.roles[Root.type].keyids)
        keys = dict(md.signed.keys) | (dict(previous.signed.keys) if previous else {})
    else:
        raise UsageError(f"{path}: is {md.signed.type} metadata; chiron sign adds signatures to root files")
    local = public_key_of(uri, secret_env)
    kid = local.keyid if local is not None else keyid
    if kid is None or kid not in candidates:
        raise SigningKeyError(
            f"key {uri} is not a root key of {path.name} or of the root before it", hint="check which key you hold"
        )
    try:
        if uri.startswith("file2:") and local is not None:
            signer: Signer = CryptoSigner(_load_pem(Path(uri[6:]).read_bytes(), uri, secret_env), local)
        else:
            signer = Signer.from_priv_key_uri(uri, keys[kid], _secret_handler(uri, secret_env))
        md.sign(signer, append=True)
    except SigningKeyError:
        raise
    except Exception as exc:  # backend libraries raise their own types (PyKCS11, boto, ...)
        cause = exc.__cause__ or exc
        raise SigningKeyError(
            f"key {uri}: signing failed: {type(cause).__name__}: {cause}",
            hint="check the PIN or passphrase (--secret-env) and that the token or KMS is reachable",
        ) from None
    write_atomic(path, to_bytes(md))
    return signature_status(md, previous) if isinstance(md.signed, Root) else None


def _previous_root(path: Path, version: int) -> Metadata[Root] | None:
    if version <= 1:
        return None
    prev = path.with_name(f"{version - 1}.root.json")
    if not prev.is_file():
        raise UsageError(f"{path}: root v{version} is checked against {prev.name}, which is not beside it")
    return parse_root(prev.read_bytes(), str(prev))


def new_root(
    directory: Path,
    role_keys: dict[str, list[Key]],
    thresholds: dict[str, int],
    expires: timedelta,
    now: datetime,
) -> Path:
    """Write an UNSIGNED root: v1 in an empty directory, else N+1 after the newest N.root.json."""
    existing = sorted(
        (int(p.name.split(".")[0]) for p in directory.glob("*.root.json") if p.name.split(".")[0].isdigit()),
    )
    version = (existing[-1] + 1) if existing else 1
    root = Root(version=version, expires=(now + expires).replace(microsecond=0), consistent_snapshot=False)
    for role, keys in role_keys.items():
        for key in keys:
            root.add_key(key, role)
        root.roles[role].threshold = thresholds.get(role, 1)
        if root.roles[role].threshold > len(keys):
            raise UsageError(f"role {role}: threshold {root.roles[role].threshold} is more than its {len(keys)} key(s)")
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{version}.root.json"
    write_atomic(out, to_bytes(Metadata(root)))
    return out


def rotate(
    directory: Path,
    role: str,
    add: Sequence[Key],
    revoke: list[str],
    threshold: int | None,
    expires: timedelta,
    now: datetime,
) -> Path:
    """Write root N+1 (unsigned) from the newest N.root.json with ``role``'s keys changed."""
    existing = sorted(
        (p for p in directory.glob("*.root.json") if p.name.split(".")[0].isdigit()),
        key=lambda p: int(p.name.split(".")[0]),
    )
    if not existing:
        raise UsageError(f"{directory}: no N.root.json to rotate from")
    current = parse_root(existing[-1].read_bytes(), str(existing[-1])).signed
    if role not in current.roles:
        raise UsageError(f"unknown role {role!r}")
    role_keys = {r: [current.keys[k] for k in current.roles[r].keyids] for r in current.roles}
    unknown = [k for k in revoke if k not in current.roles[role].keyids]
    if unknown:
        raise UsageError(f"--revoke {unknown[0][:16]}...: not a {role} key of {existing[-1].name}")
    role_keys[role] = [k for k in role_keys[role] if k.keyid not in revoke] + list(add)
    if not role_keys[role]:
        raise UsageError(f"role {role} would have no keys left")
    thresholds = {r: current.roles[r].threshold for r in current.roles}
    thresholds[role] = threshold or min(thresholds[role], len(role_keys[role]))
    return new_root(directory, role_keys, thresholds, expires, now)


def key_from_file(path: Path) -> SSlibKey:
    """A public key from a PEM public-key file, a PEM private key (its public half), or TUF key JSON."""
    import json

    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        obj = json.loads(data)
        return SSlibKey.from_dict(obj.get("keyid", ""), {k: v for k, v in obj.items() if k != "keyid"})
    if b"PRIVATE KEY" in data:
        public = public_key_of(f"file2:{path}")
        assert public is not None
        return public
    try:
        return SSlibKey.from_crypto(load_pem_public_key(data))
    except ValueError:
        raise UsageError(f"{path}: not a PEM public key, PEM private key or TUF key JSON") from None
