"""Offline ceremonies on root metadata: a new root, rotation, adding one signature at a time.

Private key material never leaves the signer: ceremonies move only metadata files, each person adding
one signature with ``chiron sign``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root

from chiron.core.fs import write_atomic
from chiron.errors import SigningKeyError, UsageError
from chiron.trust.keys import load_pem, public_key_of, secret_handler
from chiron.trust.metadata import SignatureStatus, parse_root, signature_status, to_bytes


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
        previous = previous_root(path, md.signed.version)
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
            signer: Signer = CryptoSigner(load_pem(Path(uri[6:]).read_bytes(), uri, secret_env), local)
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
    return signature_status(md, previous) if isinstance(md.signed, Root) else None


def previous_root(path: Path, version: int) -> Metadata[Root] | None:
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
        if public is None:  # public_key_of answers every file2: URI or raises: a bug if not
            raise SigningKeyError(f"{path}: no public key could be derived from this private key")
        return public
    try:
        return SSlibKey.from_crypto(load_pem_public_key(data))
    except ValueError:
        raise UsageError(f"{path}: not a PEM public key, PEM private key or TUF key JSON") from None
