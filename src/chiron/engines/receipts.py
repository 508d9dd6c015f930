"""Signed install receipts: what a host runs, signed by the host's own Ed25519 key.

A receipt says which release the host runs, the TUF metadata versions it trusts, its last operation
and result, and the head of its audit log. It is signed over its canonical JSON, so it can travel
to a ``chiron serve`` over the network or out of the enclave on media, and be checked anywhere.

The host's identity (``chiron.engines.host.identity``: its key, made at the first install or, for a
host installed before, at its first receipt) lives in ``STATE/identity/``, with ``seq.json``, the
number of the last receipt. Each receipt takes the next number and the number
is on disk before the receipt leaves, so a server that remembers the last number it accepted from a
host refuses a replayed (or older) receipt.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chiron import __version__
from chiron.core import audit as _audit
from chiron.core import filelock as _lockfile
from chiron.core.fs import write_atomic
from chiron.core.text import canonical_json
from chiron.engines.host.identity import (
    HOST_ID,
    Identity,
    ensure_identity,
    fingerprint,
    identity_dir,
    key_raw,
    key_text,
    load_identity,
)
from chiron.errors import HostStateError, UsageError, VerificationError

SCHEMA = "chiron.receipt/1"
MAX_RECEIPT = 64 << 10  # bytes of JSON: far more than a receipt needs, little enough to parse anywhere
FIELDS = {
    "schema",
    "host",
    "key",
    "key_sha256",
    "seq",
    "time",
    "prefix",
    "appliance",
    "previous",
    "metadata_versions",
    "last_operation",
    "pending_transaction",
    "audit_head",
    "warnings",
    "chiron_version",
    "signature",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign(body: dict[str, Any], key: Any) -> str:
    """The base64 Ed25519 signature of ``body`` (without its ``signature``) by ``key``."""
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return base64.b64encode(key.sign(canonical_json(unsigned))).decode()


def _sign(state: Path, body: dict[str, Any]) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_file = identity_dir(state) / "host-key.pem"
    key = load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):  # load_identity checked it; the file may have changed since
        raise HostStateError(f"{key_file}: not an Ed25519 private key")
    return sign(body, key)


def _next_seq(d: Path) -> int:
    seq_file = d / "seq.json"
    try:
        last = int(json.loads(seq_file.read_text())["seq"])
    except FileNotFoundError:
        last = 0
    except (OSError, ValueError, KeyError, TypeError):
        raise HostStateError(f"{seq_file}: damaged", hint="restore it, or write a number above the last sent") from None
    write_atomic(seq_file, (json.dumps({"seq": last + 1}) + "\n").encode(), mode=0o600)
    return last + 1


def _last_operation(ops: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not ops:
        return None
    op = ops[-1]
    out: dict[str, Any] = {k: op[k] for k in ("time", "op", "result") if k in op}
    release = op.get("release") or op.get("to_release")
    if release:
        out["release"] = str(release)
    if op.get("reason") or op.get("detail"):
        out["detail"] = str(op.get("reason") or op.get("detail"))[:500]
    return out


def make_receipt(prefix: Path, state_dir: Path | None, host: str | None = None) -> dict[str, Any]:
    """A new signed receipt for the host at ``prefix``: the next sequence number, signed by its key."""
    from chiron.engines.host import Paths
    from chiron.engines.host import status as host_status

    paths = Paths.make(prefix, state_dir)
    info = host_status(prefix, state_dir)  # refuses damaged state and an empty prefix
    identity = ensure_identity(paths.state, host)
    with _lockfile.hold(identity.directory / "lock", "receipt", wait=10.0):
        seq = _next_seq(identity.directory)
    current = info["current"]
    body: dict[str, Any] = {
        "schema": SCHEMA,
        **identity.as_dict(),
        "seq": seq,
        "time": _now(),
        "prefix": info["prefix"],
        "appliance": (
            {k: current[k] for k in ("name", "version", "release", "environment", "installed")} if current else None
        ),
        "previous": info["previous"],
        "metadata_versions": {role: int(m["version"]) for role, m in info["metadata"].items()},
        "last_operation": _last_operation(info["last_operations"]),
        "pending_transaction": info["pending_transaction"] is not None,
        "audit_head": _audit.read_head(paths.audit),
        "warnings": [str(w)[:500] for w in info["warnings"][:20]],
        "chiron_version": __version__,
    }
    body["signature"] = _sign(paths.state, body)
    return body


def check_receipt(doc: Any) -> dict[str, Any]:
    """Check a receipt's form and its signature by the key it carries; the checked receipt.

    The key is only proven to have signed it: whether the key belongs to the host is the server's
    decision (an admin approves each host's key fingerprint).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise VerificationError([f"not a {SCHEMA} document"])
    if set(doc) != FIELDS:
        unknown, missing = sorted(set(doc) - FIELDS), sorted(FIELDS - set(doc))
        raise VerificationError([f"receipt fields: unknown {unknown}, missing {missing}"])
    host, seq = doc["host"], doc["seq"]
    if not isinstance(host, str) or not HOST_ID.match(host):
        raise VerificationError([f"receipt host {host!r}: not a host id"])
    if type(seq) is not int or seq < 1:
        raise VerificationError([f"receipt seq {seq!r}: not a positive integer"])
    try:
        raw = key_raw(str(doc["key"]))
        signature = base64.b64decode(str(doc["signature"]), validate=True)
    except (UsageError, ValueError) as exc:
        raise VerificationError([f"receipt from {host}: {exc}"]) from None
    if doc["key_sha256"] != fingerprint(raw):
        raise VerificationError([f"receipt from {host}: key_sha256 is not the sha256 of its key"])
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, canonical_json(body))
    except (InvalidSignature, ValueError):
        raise VerificationError([f"receipt {seq} from {host}: the signature does not match its content"]) from None
    return doc


def read_receipt(path: Path) -> dict[str, Any]:
    """A receipt file (as written by ``chiron receipt -o``), checked."""
    try:
        if path.stat().st_size > MAX_RECEIPT:
            raise UsageError(f"{path}: larger than {MAX_RECEIPT} bytes: not a receipt")
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise VerificationError([f"{path}: not JSON"]) from None
    return check_receipt(doc)


def write_receipt(doc: dict[str, Any], out: Path) -> None:
    write_atomic(out, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


__all__ = [
    "SCHEMA",
    "Identity",
    "check_receipt",
    "ensure_identity",
    "fingerprint",
    "key_raw",
    "key_text",
    "load_identity",
    "make_receipt",
    "read_receipt",
    "sign",
    "write_receipt",
]
