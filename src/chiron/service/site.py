"""Hosts and their receipts: enrolment, an admin's approval, and the acceptance rules.

A receipt is accepted only when its signature verifies with the key it carries, the host is
approved, that key is the one approved for the host (by its sha256 fingerprint), and its sequence
number is above the last one accepted from the host. The number check and the insert are one
transaction, so two copies of a receipt arriving at once cannot both be accepted. Everything that
is refused leaves the database as it was. Used by the API and by ``chiron serve receipts import``
(receipts carried out on media).
"""

from __future__ import annotations

import json
from typing import Any

from chiron.engines import receipts as _receipts
from chiron.engines.fleet import Newest
from chiron.errors import VerificationError
from chiron.service.catalog import Snapshot
from chiron.service.db import Database, now
from chiron.service.problems import ProblemError


def newest(snapshot: Snapshot) -> dict[str, Newest]:
    """The newest served version of each appliance name."""
    out: dict[str, Newest] = {}
    for e in snapshot.entries:
        if e.name not in out or e.metadata_version > out[e.name].metadata_version:
            out[e.name] = Newest(e.name, e.version, e.metadata_version)
    return out


def _checked(doc: dict[str, Any]) -> dict[str, Any]:
    try:
        return _receipts.check_receipt(doc)
    except VerificationError as exc:
        raise ProblemError("bad-signature", exc.problems[0]) from None


def accept_receipt(db: Database, doc: dict[str, Any], via: str, latest: dict[str, Newest]) -> dict[str, Any]:
    """Accept one receipt or raise the ProblemError that says why not."""
    doc = _checked(doc)
    host_id, seq, fpr = doc["host"], doc["seq"], doc["key_sha256"]
    row = db.host(host_id)
    if row is None:
        raise ProblemError(
            "unknown-host",
            f"host {host_id} is not enrolled (key sha256 {fpr}): it enrols with its first receipt over the "
            f"network, or an admin approves it: chiron serve hosts approve {host_id} --key-sha256 {fpr}",
            host=host_id,
            key_sha256=fpr,
        )
    if row["state"] != "approved":
        raise ProblemError(
            "host-not-approved",
            f"host {host_id} is {row['state']}; an admin approves it with: "
            f"chiron serve hosts approve {host_id} --key-sha256 {fpr}",
            host=host_id,
            key_sha256=fpr,
        )
    if row["key_sha256"] != fpr:
        raise ProblemError(
            "unknown-host-key",
            f"receipt {seq} from {host_id} is signed by key {fpr}, but the key approved for {host_id} is "
            f"{row['key_sha256']}",
            host=host_id,
        )
    when = now()
    with db.transaction() as c:
        updated = c.execute(
            "UPDATE hosts SET last_seq = ?, last_seen = ?, public_key = COALESCE(public_key, ?) "
            "WHERE id = ? AND last_seq < ? AND state = 'approved' AND key_sha256 = ?",
            (seq, when, doc["key"], host_id, seq, fpr),
        ).rowcount
        if not updated:
            last = c.execute("SELECT last_seq FROM hosts WHERE id = ?", (host_id,)).fetchone()[0]
            raise ProblemError(
                "replayed-receipt",
                f"receipt {seq} from {host_id} is not newer than receipt {last}, the last one accepted (a replay?)",
                host=host_id,
                last_seq=last,
            )
        c.execute(
            "INSERT INTO receipts (host, seq, received, via, body) VALUES (?, ?, ?, ?, ?)",
            (host_id, seq, when, via, _json(doc)),
        )
    appliance = doc.get("appliance") or {}
    best = latest.get(str(appliance.get("name")))
    targets = (doc.get("metadata_versions") or {}).get("targets")
    behind = None if best is None or targets is None else int(targets) < best.metadata_version
    return {
        "host": host_id,
        "seq": seq,
        "behind": behind,
        "newest": None if best is None else {"version": best.version, "metadata_version": best.metadata_version},
    }


def enrol(db: Database, doc: dict[str, Any], by: str) -> dict[str, Any]:
    """Record a host's request to be approved, proven by a receipt signed with its key."""
    doc = _checked(doc)
    host_id, fpr = doc["host"], doc["key_sha256"]
    with db.transaction() as c:
        row = c.execute("SELECT state, key_sha256 FROM hosts WHERE id = ?", (host_id,)).fetchone()
        if row is None:
            c.execute(
                "INSERT INTO hosts (id, state, key_sha256, public_key, requested, requested_by) "
                "VALUES (?, 'pending', ?, ?, ?, ?)",
                (host_id, fpr, doc["key"], now(), by),
            )
            return {"host": host_id, "state": "pending", "key_sha256": fpr}
        if row["key_sha256"] != fpr:
            raise ProblemError(
                "enrolment-conflict",
                f"host {host_id} is {row['state']} with key {row['key_sha256']}, not {fpr}; an admin decides: "
                f"chiron serve hosts approve {host_id} --key-sha256 {fpr}",
                host=host_id,
            )
        c.execute("UPDATE hosts SET public_key = COALESCE(public_key, ?) WHERE id = ?", (doc["key"], host_id))
        return {"host": host_id, "state": row["state"], "key_sha256": fpr}


def approve(db: Database, host_id: str, key_sha256: str | None, by: str) -> dict[str, Any]:
    """Approve a host's key: the one it enrolled with, or (given) a fingerprint checked out of band.

    A different fingerprint replaces the host's key (a re-installed host) and restarts its numbering.
    """
    with db.transaction() as c:
        row = c.execute("SELECT state, key_sha256 FROM hosts WHERE id = ?", (host_id,)).fetchone()
        if row is None:
            if key_sha256 is None:
                raise ProblemError(
                    "not-found",
                    f"host {host_id} has not enrolled; give its key sha256 (chiron receipt --show-key on the host) "
                    "to approve it in advance",
                )
            c.execute(
                "INSERT INTO hosts (id, state, key_sha256, approved, approved_by) VALUES (?, 'approved', ?, ?, ?)",
                (host_id, key_sha256, now(), by),
            )
        elif key_sha256 is not None and key_sha256 != row["key_sha256"]:
            c.execute(
                "UPDATE hosts SET state = 'approved', key_sha256 = ?, public_key = NULL, last_seq = 0, "
                "approved = ?, approved_by = ? WHERE id = ?",
                (key_sha256, now(), by, host_id),
            )
        else:
            c.execute(
                "UPDATE hosts SET state = 'approved', approved = ?, approved_by = ? WHERE id = ?",
                (now(), by, host_id),
            )
    approved = key_sha256 if key_sha256 is not None or row is None else row["key_sha256"]
    return {"host": host_id, "state": "approved", "key_sha256": approved}


def revoke(db: Database, host_id: str) -> dict[str, Any]:
    with db.transaction() as c:
        row = c.execute("SELECT key_sha256 FROM hosts WHERE id = ?", (host_id,)).fetchone()
        if row is None:
            raise ProblemError("not-found", f"no host {host_id}")
        c.execute("UPDATE hosts SET state = 'revoked' WHERE id = ?", (host_id,))
    return {"host": host_id, "state": "revoked", "key_sha256": row["key_sha256"]}


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)
