"""Signing keys by URI and the secrets for them.

Keys are securesystemslib private-key URIs (file2:, hsm:, awskms:, gcpkms:, azurekms:, hv:, gnupg:)
plus chiron's ``secret:`` scheme for stores that only hold secrets (``secret:env:VAR`` holds a PEM,
``secret:keyring:SERVICE/NAME`` reads the OS keyring). Private key material never leaves the
signer: ceremonies move only metadata files, each person adding one signature with ``chiron sign``.
"""

from __future__ import annotations

import getpass
import os
import sys
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
from tuf.api.metadata import Root

from chiron.core.fs import read_small
from chiron.errors import SigningKeyError, UsageError

SECRET_SCHEME = "secret"  # noqa: S105 - a URI scheme name, not a secret
KEY_FILE_MAX = 64 << 10  # a PEM or TUF key JSON is a few KiB; anything bigger is not a key


def secret_handler(uri: str, secret_env: str | None) -> SecretsHandler:
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


def load_pem(pem: bytes, uri: str, secret_env: str | None) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(pem, password=None)
    except TypeError:
        passphrase = secret_handler(uri, secret_env)("passphrase").encode()
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
        priv = load_pem(pem, priv_key_uri, None)
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


def check_uri(uri: str) -> str:
    """The scheme of a private-key URI; a UsageError naming the URI when it has none chiron knows."""
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest:
        raise UsageError(f"key {uri!r}: not a private-key URI (SCHEME:..., e.g. file2:PATH or hsm:...)")
    if scheme not in SIGNER_FOR_URI_SCHEME:
        known = ", ".join(f"{s}:" for s in sorted(SIGNER_FOR_URI_SCHEME))
        raise UsageError(f"key {uri}: unknown scheme {scheme!r} (known: {known})")
    return scheme


def file_pem(uri: str) -> bytes:
    """The bytes of a ``file2:`` key file: a regular file of bounded size (never a FIFO or device)."""
    try:
        return read_small(Path(uri.partition(":")[2]), KEY_FILE_MAX, "key file")
    except UsageError as exc:
        raise SigningKeyError(exc.message) from None


def public_key_of(uri: str, secret_env: str | None = None) -> SSlibKey | None:
    """The public key of a locally held private key (file2:, secret:); None for remote backends."""
    scheme = check_uri(uri)
    if scheme == "file2":
        pem = file_pem(uri)
    elif scheme == SECRET_SCHEME:
        pem = fetch_secret(uri)
    else:
        return None
    return SSlibKey.from_crypto(load_pem(pem, uri, secret_env).public_key())


# Right after a rotation the usual cause is a spec whose trust.root names one file (1.root.json)
# instead of the directory holding the new N.root.json: say so rather than "rotate the root".
_NOT_LISTED_HINT = (
    "use the key this root lists for the role; after a rotation, trust.root must name the "
    "DIRECTORY of N.root.json files, not one file, so that the newest root is used"
)


def load_signer(uri: str, role: str, root: Root, keyid: str | None, secret_env: str | None = None) -> Signer:
    """A Signer for a private-key URI, tied to a key that root lists for ``role``."""
    allowed = root.roles[role].keyids
    local = public_key_of(uri, secret_env)
    if local is not None:
        if local.keyid not in allowed:
            raise SigningKeyError(
                f"key {uri} is not a {role} key of the root metadata (root v{root.version}; "
                f"its keyid {local.keyid[:16]}... is not listed)",
                hint=_NOT_LISTED_HINT,
            )
        if uri.startswith("file2:"):
            # Loaded here rather than by securesystemslib so that encrypted PEM files work too.
            return CryptoSigner(load_pem(file_pem(uri), uri, secret_env), local)
        keyid = local.keyid
    if keyid is None:
        raise SigningKeyError(f'key {uri}: give keyid = "..." (which {role} key of the root this is)')
    if keyid not in allowed:
        raise SigningKeyError(
            f"key {uri}: keyid {keyid[:16]}... is not a {role} key of the root metadata (root v{root.version})",
            hint=_NOT_LISTED_HINT,
        )
    try:
        return Signer.from_priv_key_uri(uri, root.keys[keyid], secret_handler(uri, secret_env))
    except SigningKeyError:
        raise
    except (ValueError, KeyError) as exc:
        raise SigningKeyError(f"key {uri}: {exc}") from None
    except OSError as exc:
        raise SigningKeyError(f"key {uri}: cannot open: {exc.strerror or exc}") from None
    except Exception as exc:  # backend libraries raise their own types (PyKCS11, boto, ...)
        raise SigningKeyError(f"key {uri}: the signing backend failed: {type(exc).__name__}: {exc}") from None
