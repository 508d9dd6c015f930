"""TUF repository writing, key handling by securesystemslib URI, the offline archive fetcher, and
the detached SSH signature over the whole file."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface

from chiron.errors import SigningKeyError, UsageError

SERIALIZER = JSONSerializer(compact=False)
ONLINE_ROLES = ("targets", "snapshot", "timestamp")


def to_bytes(md: Metadata[Any]) -> bytes:
    """The one serialisation chiron writes; verify insists on exactly these bytes."""
    return bytes(md.to_bytes(SERIALIZER))


def fingerprint(root_bytes: bytes) -> str:
    """A root's fingerprint: the sha256 of its file, as given to ``verify --root-sha256``."""
    return hashlib.sha256(root_bytes).hexdigest()


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 from the start (never world-readable, even briefly)."""
    write_atomic(path, data, mode=0o600)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class DevKeys:
    """What ``chiron keys init`` made."""

    directory: Path
    root_path: Path
    fingerprint: str
    keyids: dict[str, str]


def init_dev_keys(directory: Path, *, root_expires: timedelta, now: datetime, force: bool = False) -> DevKeys:
    """Make a throw-away Ed25519 key per role (PEM, 0600) and a signed root v1 naming them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = [p.name for p in directory.iterdir() if p.suffix == ".pem" or p.name == "1.root.json"]
    if existing and not force:
        raise UsageError(
            f"{directory}: already holds keys ({', '.join(sorted(existing))})",
            hint="choose an empty directory, or pass --force to replace them",
        )
    root = Root(expires=_expiry(now, root_expires), consistent_snapshot=False)
    signers: dict[str, CryptoSigner] = {}
    keyids: dict[str, str] = {}
    for role in ("root", *ONLINE_ROLES):
        priv = ed25519.Ed25519PrivateKey.generate()
        pem = priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(directory / f"{role}.pem", pem)
        public = SSlibKey.from_crypto(priv.public_key())
        root.add_key(public, role)
        signers[role] = CryptoSigner(priv, public)
        keyids[role] = public.keyid
    md = Metadata(root)
    md.sign(signers["root"])
    data = to_bytes(md)
    root_path = directory / "1.root.json"
    write_atomic(root_path, data)
    allowed = allowed_signers_line("chiron", "chiron-appliance", signers["targets"].public_key)
    write_atomic(directory / "allowed_signers", allowed.encode())
    return DevKeys(directory, root_path, fingerprint(data), keyids)


def _expiry(now: datetime, delta: timedelta) -> datetime:
    return (now + delta).replace(microsecond=0)


# ---------------------------------------------------------------- repository


def load_root_chain(path: Path) -> list[bytes]:
    """Root metadata from a file, or every N.root.json of a directory in version order."""
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.name.endswith(".root.json") and p.name.split(".")[0].isdigit()),
            key=lambda p: int(p.name.split(".")[0]),
        )
        if not files:
            raise UsageError(f"{path}: no N.root.json files (make them with chiron keys init)")
        chain = [p.read_bytes() for p in files]
    else:
        try:
            chain = [path.read_bytes()]
        except OSError as exc:
            raise UsageError(f"{path}: cannot read root metadata: {exc.strerror}") from None
    problems = check_root_chain(chain)
    if problems:
        raise UsageError(f"{path}: {problems[0]}")
    return chain


def parse_root(data: bytes, what: str) -> Metadata[Root]:
    try:
        md = Metadata[Root].from_bytes(data)
    except Exception as exc:
        raise UsageError(f"{what}: not valid root metadata: {exc}") from None
    if not isinstance(md.signed, Root):
        raise UsageError(f"{what}: is {md.signed.type} metadata, not root")
    return md


def check_root_chain(chain: list[bytes]) -> list[str]:
    """Each root N+1 must be signed by the threshold of root N and of itself, versions consecutive."""
    problems: list[str] = []
    mds: list[Metadata[Root]] = []
    for i, data in enumerate(chain):
        try:
            mds.append(parse_root(data, f"root chain entry {i + 1}"))
        except UsageError as exc:
            return [exc.message]
    if mds and mds[0].signed.version != 1:
        # Every host, however old its trusted root, must be able to walk the chain from version 1.
        problems.append(f"root chain starts at version {mds[0].signed.version}, not 1")
    for prev, cur in itertools.pairwise(mds):
        if cur.signed.version != prev.signed.version + 1:
            problems.append(f"root chain: version {cur.signed.version} follows {prev.signed.version}")
    from chiron._keys import signature_status

    for i, md in enumerate(mds):
        status = signature_status(md, mds[i - 1] if i > 0 else None)
        if not status.complete:
            problems.append(f"root v{md.signed.version}: threshold not met: {status.describe()}")
    return problems


def build_repository(
    root_chain: list[bytes],
    signers: Mapping[str, list[Signer]],
    targets: Mapping[str, TargetFile],
    *,
    now: datetime,
    expires: Mapping[str, timedelta],
    version: int,
) -> dict[str, bytes]:
    """Sign targets, snapshot and timestamp over ``targets``; returns archive member name -> bytes."""
    root = parse_root(root_chain[-1], "root").signed
    for role in ONLINE_ROLES:
        have = len(signers.get(role, []))
        if have < root.roles[role].threshold:
            raise SigningKeyError(
                f"role {role}: {have} signing key(s) given, the root's threshold is {root.roles[role].threshold}"
            )
    tmd = Metadata(Targets(version=version, expires=_expiry(now, expires["targets"]), targets=dict(targets)))
    tbytes = _sign(tmd, signers["targets"])
    smd = Metadata(Snapshot(version=version, expires=_expiry(now, expires["snapshot"])))
    smd.signed.meta["targets.json"] = MetaFile.from_data(version, tbytes, ["sha256"])
    sbytes = _sign(smd, signers["snapshot"])
    ts = Metadata(Timestamp(version=version, expires=_expiry(now, expires["timestamp"])))
    ts.signed.snapshot_meta = MetaFile.from_data(version, sbytes, ["sha256"])
    out = {f"metadata/{parse_root(r, 'root').signed.version}.root.json": r for r in root_chain}
    out.update(
        {
            "metadata/targets.json": tbytes,
            "metadata/snapshot.json": sbytes,
            "metadata/timestamp.json": _sign(ts, signers["timestamp"]),
        }
    )
    return out


def _sign(md: Metadata[Any], signers: list[Signer]) -> bytes:
    for s in signers:
        try:
            md.sign(s, append=True)
        except Exception as exc:
            cause = getattr(exc, "__cause__", None) or exc
            raise SigningKeyError(
                f"signing {md.signed.type} with key {s.public_key.keyid[:16]}... failed: "
                f"{type(cause).__name__}: {cause}".rstrip(": "),
                hint="check the key's PIN or passphrase (secret_env) and that its token or KMS is reachable",
            ) from None
    return to_bytes(md)


# ---------------------------------------------------------------- offline fetcher


class ArchiveFetcher(FetcherInterface):
    """Serves ``metadata/`` members of an appliance to python-tuf's Updater, with no network.

    A missing member is a 404, which is what ends the Updater's root-rotation loop.
    """

    BASE = "chiron-archive:/metadata/"

    def __init__(self, path: Path, regions: Mapping[str, tuple[int, int]]) -> None:
        self._path = path
        self._regions = regions

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self.BASE):
            raise DownloadHTTPError(f"{url}: not in this archive", 404)
        name = "metadata/" + url[len(self.BASE) :]
        region = self._regions.get(name)
        if region is None:
            raise DownloadHTTPError(f"{name}: not in this archive", 404)
        return self._chunks(*region)

    def _chunks(self, offset: int, length: int) -> Iterator[bytes]:
        with self._path.open("rb") as f:
            fd = f.fileno()
            end = offset + length
            while offset < end:
                chunk = os.pread(fd, min(1 << 16, end - offset), offset)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk


# ---------------------------------------------------------------- detached SSH signature


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _ssh_mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big") if n else b""
    return _ssh_string(raw)


def _ssh_public_blob(key: Key) -> tuple[str, bytes]:
    if not isinstance(key, SSlibKey):
        raise SigningKeyError(f"key {key.keyid[:16]}...: cannot express it as an SSH key")
    if key.keytype == "ed25519":
        pub = bytes.fromhex(key.keyval["public"])
        return "ssh-ed25519", _ssh_string(b"ssh-ed25519") + _ssh_string(pub)
    if key.keytype in ("ecdsa", "ecdsa-sha2-nistp256") and key.scheme == "ecdsa-sha2-nistp256":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pk = serialization.load_pem_public_key(key.keyval["public"].encode())
        assert isinstance(pk, ec.EllipticCurvePublicKey)
        point = pk.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        name = b"ecdsa-sha2-nistp256"
        return name.decode(), _ssh_string(name) + _ssh_string(b"nistp256") + _ssh_string(point)
    raise SigningKeyError(f"key {key.keyid[:16]}...: {key.scheme} keys cannot make SSH signatures")


def allowed_signers_line(identity: str, namespace: str, key: Key) -> str:
    """A line for ssh-keygen's allowed_signers file trusting ``key`` for ``namespace``."""
    kind, blob = _ssh_public_blob(key)
    return f'{identity} namespaces="{namespace}" {kind} {base64.b64encode(blob).decode()}\n'


def ssh_signature(signer: Signer, namespace: str, sha512_digest: bytes) -> bytes:
    """An armored SSHSIG over a file whose SHA-512 is given (``ssh-keygen -Y verify`` checks it)."""
    kind, blob = _ssh_public_blob(signer.public_key)
    signed = (
        b"SSHSIG"
        + _ssh_string(namespace.encode())
        + _ssh_string(b"")
        + _ssh_string(b"sha512")
        + _ssh_string(sha512_digest)
    )
    raw = bytes.fromhex(signer.sign(signed).signature)
    if kind == "ssh-ed25519":
        sig = _ssh_string(b"ssh-ed25519") + _ssh_string(raw)
    else:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(raw)
        sig = _ssh_string(kind.encode()) + _ssh_string(_ssh_mpint(r) + _ssh_mpint(s))
    body = (
        b"SSHSIG"
        + struct.pack(">I", 1)
        + _ssh_string(blob)
        + _ssh_string(namespace.encode())
        + _ssh_string(b"")
        + _ssh_string(b"sha512")
        + _ssh_string(sig)
    )
    text = base64.b64encode(body).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return ("-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n").encode()


def utc_from_epoch(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
