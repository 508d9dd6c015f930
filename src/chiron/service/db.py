"""The service's own state in SQLite (stdlib ``sqlite3``): tokens, hosts, receipts, jobs, yanks, and the
sessions of people logged in to the pages (service/pages/session.py; a table added later, created on open).

WAL mode (readers never wait for the writer), ``synchronous=FULL`` (an accepted receipt or a made
token survives a power cut), one connection per thread, and every change in one ``BEGIN IMMEDIATE``
transaction, so a refused or failed request leaves the database as it was. The schema carries a
version; a database written by a newer chiron is refused rather than guessed at.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chiron.errors import EnvironmentProblem, UsageError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, name TEXT NOT NULL, scopes TEXT NOT NULL,
  created TEXT NOT NULL, expires TEXT, revoked TEXT, last_used TEXT);
CREATE TABLE IF NOT EXISTS hosts (
  id TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'revoked')),
  key_sha256 TEXT, public_key TEXT, requested TEXT, requested_by TEXT, approved TEXT, approved_by TEXT,
  last_seq INTEGER NOT NULL DEFAULT 0, last_seen TEXT);
CREATE TABLE IF NOT EXISTS receipts (
  host TEXT NOT NULL REFERENCES hosts(id), seq INTEGER NOT NULL, received TEXT NOT NULL,
  via TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (host, seq));
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, store TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
  created TEXT NOT NULL, started TEXT, finished TEXT, requested_by TEXT NOT NULL, options TEXT NOT NULL,
  pid INTEGER, error TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS job_log (
  job TEXT NOT NULL REFERENCES jobs(id), n INTEGER NOT NULL, time TEXT NOT NULL, line TEXT NOT NULL,
  PRIMARY KEY (job, n));
CREATE TABLE IF NOT EXISTS yanks (filename TEXT PRIMARY KEY, reason TEXT NOT NULL, time TEXT NOT NULL, by TEXT);
CREATE TABLE IF NOT EXISTS sessions (
  id_sha256 TEXT PRIMARY KEY, token TEXT NOT NULL REFERENCES tokens(id), csrf TEXT NOT NULL,
  created TEXT NOT NULL, expires TEXT NOT NULL);
"""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Database:
    """One SQLite file; open it once per process, use it from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        if path.exists() and not path.is_file():
            raise UsageError(f"--db {path}: not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # tokens: private from the start
        with self.transaction() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise UsageError(
                    f"--db {path}: written by a newer chiron (schema {row[0]}, this one knows {SCHEMA_VERSION})",
                    hint="run the newer chiron, or restore the database it was upgraded from",
                )

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise EnvironmentProblem(f"--db {self.path}: cannot open the database: {exc}") from None
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: committed when the block ends, rolled back on any exception."""
        conn = self.conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise EnvironmentProblem(f"--db {self.path}: {exc}", hint="is it a chiron serve database?") from None
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.conn().execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn().execute(sql, args).fetchone()
        return row

    # ------------------------------------------------------------ tokens

    def add_token(self, token_id: str, secret_sha256: str, name: str, scopes: list[str], expires: str | None) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO tokens (id, secret_sha256, name, scopes, created, expires) VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, secret_sha256, name, " ".join(scopes), now(), expires),
            )

    def revoke_token(self, token_id: str) -> bool:
        with self.transaction() as c:
            done = c.execute(
                "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (now(), token_id)
            ).rowcount
        return bool(done)

    def tokens(self) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT id, name, scopes, created, expires, revoked, last_used FROM tokens ORDER BY created, rowid"
        )
        return [{**dict(r), "scopes": r["scopes"].split()} for r in rows]

    def token(self, token_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM tokens WHERE id = ?", (token_id,))

    def touch_token(self, token_id: str, when: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (when, token_id))

    # ------------------------------------------------------------ hosts and receipts

    def host(self, host: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM hosts WHERE id = ?", (host,))

    def hosts(self) -> list[dict[str, Any]]:
        """Every host with its newest receipt (parsed), for the fleet view."""
        rows = self.query(
            "SELECT h.*, r.body AS receipt FROM hosts h LEFT JOIN receipts r ON r.host = h.id AND r.seq = h.last_seq "
            "ORDER BY h.id"
        )
        return [
            {
                "host": r["id"],
                "state": r["state"],
                "key_sha256": r["key_sha256"],
                "last_seq": r["last_seq"],
                "last_seen": r["last_seen"],
                "requested": r["requested"],
                "approved": r["approved"],
                "receipt": json.loads(r["receipt"]) if r["receipt"] else None,
            }
            for r in rows
        ]

    def receipts(self, host: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT seq, received, via, body FROM receipts WHERE host = ? ORDER BY seq DESC LIMIT ?", (host, limit)
        )
        return [
            {"seq": r["seq"], "received": r["received"], "via": r["via"], "receipt": json.loads(r["body"])}
            for r in rows
        ]

    # ------------------------------------------------------------ yanks

    def yanks(self) -> dict[str, str]:
        return {r["filename"]: r["reason"] for r in self.query("SELECT filename, reason FROM yanks")}

    def set_yank(self, filename: str, reason: str | None, by: str) -> bool:
        """Yank ``filename`` (a reason given) or un-yank it (None); whether anything changed."""
        with self.transaction() as c:
            if reason is None:
                return bool(c.execute("DELETE FROM yanks WHERE filename = ?", (filename,)).rowcount)
            c.execute(
                "INSERT INTO yanks VALUES (?, ?, ?, ?) ON CONFLICT(filename) DO UPDATE SET reason = excluded.reason, "
                "time = excluded.time, by = excluded.by",
                (filename, reason, now(), by),
            )
            return True

    # ------------------------------------------------------------ jobs

    def add_job(self, job_id: str, kind: str, store: str, by: str, options: dict[str, Any]) -> bool:
        """Queue a job unless one of its kind is queued or running on the store; whether it was added."""
        with self.transaction() as c:
            busy = c.execute(
                "SELECT id FROM jobs WHERE store = ? AND kind = ? AND state IN ('queued', 'running')", (store, kind)
            ).fetchone()
            if busy is not None:
                return False
            c.execute(
                "INSERT INTO jobs (id, kind, store, state, created, requested_by, options) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, kind, store, now(), by, json.dumps(options, sort_keys=True)),
            )
        return True

    def active_job(self, store: str, kind: str) -> str | None:
        row = self.one(
            "SELECT id FROM jobs WHERE store = ? AND kind = ? AND state IN ('queued', 'running')", (store, kind)
        )
        return None if row is None else str(row["id"])

    def job_started(self, job_id: str, pid: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE jobs SET state = 'running', started = ?, pid = ? WHERE id = ?", (now(), pid, job_id))

    def job_log(self, job_id: str, line: str) -> None:
        with self.transaction() as c:
            n = c.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM job_log WHERE job = ?", (job_id,)).fetchone()[0]
            c.execute("INSERT INTO job_log VALUES (?, ?, ?, ?)", (job_id, n, now(), line[:4000]))

    def job_finished(self, job_id: str, ok: bool, result: dict[str, Any] | None, error: str | None) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE jobs SET state = ?, finished = ?, result = ?, error = ? WHERE id = ?",
                (
                    "succeeded" if ok else "failed",
                    now(),
                    json.dumps(result, sort_keys=True) if result is not None else None,
                    error,
                    job_id,
                ),
            )

    def interrupted_jobs(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM jobs WHERE state IN ('queued', 'running')")

    def fail_interrupted(self, job_id: str, reason: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (now(), reason, job_id),
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        row = self.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            return None
        log = self.query("SELECT time, line FROM job_log WHERE job = ? ORDER BY n", (job_id,))
        return {**_job(row), "log": [{"time": r["time"], "line": r["line"]} for r in log]}

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return [_job(r) for r in self.query("SELECT * FROM jobs ORDER BY created DESC, id DESC LIMIT ?", (limit,))]

    def last_job_created(self, store: str, kind: str) -> str | None:
        row = self.one("SELECT MAX(created) AS c FROM jobs WHERE store = ? AND kind = ?", (store, kind))
        return None if row is None or row["c"] is None else str(row["c"])


def _job(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "store": row["store"],
        "state": row["state"],
        "created": row["created"],
        "started": row["started"],
        "finished": row["finished"],
        "requested_by": row["requested_by"],
        "options": json.loads(row["options"]),
        "pid": row["pid"],
        "error": row["error"],
        "result": json.loads(row["result"]) if row["result"] else None,
    }
