"""TUF metadata: the canonical bytes chiron writes, root chains and their signature thresholds, and
signing a repository's online roles."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
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

from chiron.archive.layout import root_member, root_version
from chiron.archive.reader import read_file
from chiron.core.text import plain
from chiron.errors import SigningKeyError, UsageError

SERIALIZER = JSONSerializer(compact=False)
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
MAX_ROOT = 2 << 20  # a root with hundreds of keys is tens of KiB; python-tuf's own default is 500 kB


def to_bytes(md: Metadata[Any]) -> bytes:
    """The one serialisation chiron writes; verify insists on exactly these bytes."""
    return bytes(md.to_bytes(SERIALIZER))


def fingerprint(root_bytes: bytes) -> str:
    """A root's fingerprint: the sha256 of its file, as given to ``verify --root-sha256``."""
    return hashlib.sha256(root_bytes).hexdigest()


# ---------------------------------------------------------------- keys


def expiry(now: datetime, delta: timedelta) -> datetime:
    return (now + delta).replace(microsecond=0)


# ---------------------------------------------------------------- repository


def load_root_chain(path: Path) -> list[bytes]:
    """Root metadata from a file, or every N.root.json of a directory in version order."""
    if path.is_dir():
        files = sorted(
            ((v, p) for p in path.iterdir() if (v := root_version(p.name)) is not None),
            key=lambda vp: vp[0],
        )
        if not files:
            raise UsageError(f"{path}: no N.root.json files (make them with chiron keys init)")
        chain = [read_file(p, MAX_ROOT, "root metadata") for _v, p in files]
    else:
        chain = [read_file(path, MAX_ROOT, "root metadata")]
    problems = check_root_chain(chain)
    if problems:
        raise UsageError(f"{path}: {problems[0]}")
    return chain


def parse_root(data: bytes, what: str) -> Metadata[Root]:
    try:
        md = Metadata[Root].from_bytes(data)
    except Exception as exc:
        raise UsageError(f"{what}: not valid root metadata: {plain(str(exc))}") from None
    if not isinstance(md.signed, Root):
        raise UsageError(f"{what}: is {md.signed.type} metadata, not root")
    return md


def check_root_chain(chain: Iterable[bytes]) -> list[str]:
    """Each root N+1 must be signed by the threshold of root N and of itself, versions consecutive.

    The chain is walked one root at a time, holding only the previous one: an archive's chain is
    read lazily from it, whatever its length.
    """
    problems: list[str] = []
    prev: Metadata[Root] | None = None
    for i, data in enumerate(chain):
        try:
            md = parse_root(data, f"root chain entry {i + 1}")
        except UsageError as exc:
            return [*problems, exc.message]
        if prev is None and md.signed.version != 1:
            # Every host, however old its trusted root, must be able to walk the chain from version 1.
            problems.append(f"root chain starts at version {md.signed.version}, not 1")
        if prev is not None and md.signed.version != prev.signed.version + 1:
            problems.append(f"root chain: version {md.signed.version} follows {prev.signed.version}")
        status = signature_status(md, prev)
        if not status.complete:
            # keyids are whatever the root file says: escaped, as it may come from an archive
            problems.append(f"root v{md.signed.version}: threshold not met: {plain(status.describe())}")
        prev = md
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
    tmd = Metadata(Targets(version=version, expires=expiry(now, expires["targets"]), targets=dict(targets)))
    tbytes = _sign(tmd, signers["targets"])
    smd = Metadata(Snapshot(version=version, expires=expiry(now, expires["snapshot"])))
    smd.signed.meta["targets.json"] = MetaFile.from_data(version, tbytes, ["sha256"])
    sbytes = _sign(smd, signers["snapshot"])
    ts = Metadata(Timestamp(version=version, expires=expiry(now, expires["timestamp"])))
    ts.signed.snapshot_meta = MetaFile.from_data(version, sbytes, ["sha256"])
    out = {root_member(parse_root(r, "root").signed.version): r for r in root_chain}
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
