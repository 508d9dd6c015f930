"""Offline ceremonies on root metadata: a new root, rotation, adding one signature at a time.

Private key material never leaves the signer: ceremonies move only metadata files, each person adding
one signature with ``chiron sign``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root

from chiron.archive.layout import root_version
from chiron.core.fs import read_small, write_atomic
from chiron.errors import SigningKeyError, UsageError
from chiron.trust.keys import KEY_FILE_MAX, file_pem, load_pem, public_key_of, secret_handler
from chiron.trust.metadata import SignatureStatus, parse_root, signature_status, to_bytes

ROOT_MAX = 512_000  # python-tuf's default bound on root metadata, which every host applies too


def read_root(path: Path, what: str = "root metadata") -> Metadata[Root]:
    """A root metadata file: a regular file within ROOT_MAX bytes holding root metadata."""
    return parse_root(read_small(path, ROOT_MAX, what), str(path))


def sign_file(path: Path, uri: str, keyid: str | None = None, secret_env: str | None = None) -> SignatureStatus:
    """Add one signature to a root metadata file (pending or not); written atomically."""
    data = read_small(path, ROOT_MAX, "root metadata")
    try:
        md = Metadata.from_bytes(data)
    except Exception as exc:
        raise UsageError(f"{path}: not TUF metadata: {exc}") from None
    if not isinstance(md.signed, Root):
        raise UsageError(f"{path}: is {md.signed.type} metadata; chiron sign adds signatures to root files")
    candidates = set(md.signed.roles[Root.type].keyids)
    previous = previous_root(path, md.signed.version)
    if previous is not None:
        candidates |= set(previous.signed.roles[Root.type].keyids)
    keys = dict(md.signed.keys) | (dict(previous.signed.keys) if previous else {})
    local = public_key_of(uri, secret_env)
    kid = local.keyid if local is not None else keyid
    if kid is None or kid not in candidates:
        raise SigningKeyError(
            f"key {uri} is not a root key of {path.name} or of the root before it", hint="check which key you hold"
        )
    try:
        if uri.startswith("file2:") and local is not None:
            signer: Signer = CryptoSigner(load_pem(file_pem(uri), uri, secret_env), local)
        else:
            signer = Signer.from_priv_key_uri(uri, keys[kid], secret_handler(uri, secret_env))
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
    return signature_status(md, previous)


def previous_root(path: Path, version: int) -> Metadata[Root] | None:
    if version <= 1:
        return None
    prev = path.with_name(f"{version - 1}.root.json")
    if not prev.exists():
        raise UsageError(f"{path}: root v{version} is checked against {prev.name}, which is not beside it")
    return read_root(prev, "previous root")


def new_root(
    directory: Path,
    role_keys: dict[str, list[Key]],
    thresholds: dict[str, int],
    expires: timedelta,
    now: datetime,
) -> Path:
    """Write an UNSIGNED root: v1 in an empty directory, else N+1 after the newest N.root.json."""
    existing = _versions(directory)
    version = (existing[-1][0] + 1) if existing else 1
    root = Root(version=version, expires=expires_at(now, expires, "--expires"), consistent_snapshot=False)
    for role, keys in role_keys.items():
        for key in keys:
            root.add_key(key, role)
        wanted = thresholds.get(role, 1)
        count = len(root.roles[role].keyids)  # a key given twice counts once: a threshold it allows is real
        if wanted < 1:
            raise UsageError(f"--threshold {role}={wanted}: a threshold is at least 1")
        if wanted > count:
            raise UsageError(f"role {role}: threshold {wanted} is more than its {count} key(s)")
        root.roles[role].threshold = wanted
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot use as the root directory: {exc.strerror or exc}") from None
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
    if role not in ("root", "targets", "snapshot", "timestamp"):
        raise UsageError(f"unknown role {role!r} (root, targets, snapshot or timestamp)")
    if threshold is not None and threshold < 1:
        raise UsageError(f"--threshold {threshold}: a threshold is at least 1")
    existing = [p for _v, p in _versions(directory)]
    if not existing:
        raise UsageError(f"--root-dir {directory}: no N.root.json to rotate from")
    current = read_root(existing[-1]).signed
    role_keys = {r: [current.keys[k] for k in current.roles[r].keyids] for r in current.roles}
    unknown = [k for k in revoke if k not in current.roles[role].keyids]
    if unknown:
        raise UsageError(f"--revoke {unknown[0][:16]}...: not a {role} key of {existing[-1].name}")
    kept = {k.keyid: k for k in role_keys[role] if k.keyid not in revoke} | {k.keyid: k for k in add}
    role_keys[role] = list(kept.values())
    if not role_keys[role]:
        raise UsageError(f"role {role} would have no keys left")
    thresholds = {r: current.roles[r].threshold for r in current.roles}
    thresholds[role] = threshold if threshold is not None else min(thresholds[role], len(role_keys[role]))
    return new_root(directory, role_keys, thresholds, expires, now)


def _versions(directory: Path) -> list[tuple[int, Path]]:
    """The N.root.json files of a root directory, oldest first; a UsageError if it is not one."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: is not a directory (give the directory that holds the N.root.json files)")
    if not directory.exists():
        return []
    found = []
    for p in directory.iterdir():
        if (version := root_version(p.name)) is not None:
            found.append((version, p))
    return sorted(found)


def expires_at(now: datetime, delta: timedelta, option: str) -> datetime:
    """``now + delta`` to the second; a UsageError naming the option when it is past the calendar."""
    try:
        return (now + delta).replace(microsecond=0)
    except OverflowError:
        raise UsageError(f"{option}: {delta.days} days is too far in the future") from None


def key_from_file(path: Path, what: str) -> SSlibKey:
    """A public key from a PEM public-key file, a PEM private key (its public half), or TUF key JSON.

    ``what`` names the option it came from, for the one-line error when the file is none of these.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = read_small(path, KEY_FILE_MAX, what)
    if data.lstrip().startswith(b"{"):
        return _key_from_json(path, data, what)
    if b"PRIVATE KEY" in data:
        public = public_key_of(f"file2:{path}")
        if public is None:  # a file2: URI is always a local key; kept for the type checker
            raise UsageError(f"{what} {path}: not a private key")
        return public
    try:
        return SSlibKey.from_crypto(load_pem_public_key(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not PEM, or a key type securesystemslib cannot use
        raise UsageError(f"{what} {path}: not a PEM public key, PEM private key or TUF key JSON") from None


def _key_from_json(path: Path, data: bytes, what: str) -> SSlibKey:
    """A key from TUF key JSON: ``keyid``, ``keytype``, ``scheme`` and ``keyval``."""
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise TypeError("not an object")
        keyid = obj.get("keyid")
        if not isinstance(keyid, str) or not keyid:
            raise UsageError(f"{what} {path}: TUF key JSON without a keyid field")
        return SSlibKey.from_dict(keyid, {k: v for k, v in obj.items() if k != "keyid"})
    except ValueError as exc:  # json's errors are ValueErrors too
        raise UsageError(f"{what} {path}: not TUF key JSON: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{what} {path}: not TUF key JSON (keytype, scheme, keyval): {exc!s:.80}") from None
