"""Deltas made on demand for a host's inventory, kept in a bounded cache.

A delta is named by what it is made of: the sha256 of the full appliance it rebuilds and the set of
pieces the host holds. Hosts on the same release send the same inventory content, so a fleet costs
one build per (release held, release wanted) pair. Concurrent requests for the same delta build it
once (a lock per name); the cache drops its least recently used deltas beyond a size and count.
Nothing here is trusted by a host: a delta only rebuilds a file that the host then verifies fully.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron.archive import delta as _delta
from chiron.core import filelock as _lockfile
from chiron.core.fs import sha256_file, write_atomic
from chiron.core.text import canonical_json
from chiron.errors import VerificationError


@dataclass(frozen=True)
class CachedDelta:
    path: Path
    key: str
    size: int
    sha256: str
    carried: int  # bytes of the appliance the delta carries
    reused: int  # bytes the host already holds
    full_size: int
    name: str | None
    version: str | None
    hit: bool = False  # taken from the cache, not built for this request


def delta_key(content: list[str], appliance_sha256: str) -> str:
    """The cache name of the delta to ``appliance_sha256`` for a host holding ``content``."""
    return hashlib.sha256(canonical_json({"have": sorted(set(content)), "to": appliance_sha256})).hexdigest()


class DeltaCache:
    """Deltas under ``directory`` (``KEY.delta`` with ``KEY.json`` describing it)."""

    def __init__(self, directory: Path, max_bytes: int = 8 << 30, max_files: int = 512) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max_files

    def get(self, inventory: dict[str, Any], appliance: Path, appliance_sha256: str) -> CachedDelta:
        """The delta from ``inventory`` to ``appliance`` (whose whole-file sha256 the caller verified),
        built now or taken from the cache."""
        self.directory.mkdir(parents=True, exist_ok=True)
        key = delta_key([str(c) for c in inventory["content"]], appliance_sha256)
        with _lockfile.hold(self.directory / f"{key}.lock", "delta", wait=600.0):
            found = self.find(key)
            if found is not None:
                os.utime(found.path)  # recently used: the last to be evicted
                return dataclasses.replace(found, hit=True)
            made = self._build(key, inventory, appliance, appliance_sha256)
        self._evict(keep=key)
        return made

    def find(self, key: str) -> CachedDelta | None:
        """The cached delta named ``key`` (a sha256, as in its URL), if the cache still has it."""
        path, record = self.directory / f"{key}.delta", self.directory / f"{key}.json"
        try:
            info = json.loads(record.read_text())
            if path.stat().st_size != info["size"]:
                return None
            return CachedDelta(path=path, key=key, **{k: info[k] for k in _RECORDED})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _build(self, key: str, inventory: dict[str, Any], appliance: Path, appliance_sha256: str) -> CachedDelta:
        path = self.directory / f"{key}.delta"
        with tempfile.TemporaryDirectory(prefix=".inventory-", dir=self.directory) as tmp:
            base = Path(tmp) / "inventory.json"
            base.write_text(json.dumps(inventory))
            made = _delta.make(base, appliance, path)
        header = _delta.read(path).header
        if header["sha256"] != appliance_sha256:
            path.unlink(missing_ok=True)
            raise VerificationError(
                [f"{appliance}: changed while a delta was made from it (its sha256 is not the one verified)"]
            )
        info: dict[str, Any] = {
            "size": made.size,
            "sha256": sha256_file(path),
            "carried": made.carried,
            "reused": made.reused,
            "full_size": int(header["size"]),
            "name": header.get("name"),
            "version": header.get("version"),
        }
        write_atomic(self.directory / f"{key}.json", json.dumps(info, sort_keys=True).encode())
        return CachedDelta(path=path, key=key, **info)

    def _evict(self, keep: str) -> None:
        """Drop the least recently used deltas while the cache is over its size or count."""
        entries = []
        for p in self.directory.glob("*.delta"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        entries.sort()
        total = sum(size for _m, size, _p in entries)
        count = len(entries)
        for _m, size, p in entries:
            if total <= self.max_bytes and count <= self.max_files:
                break
            if p.stem == keep:
                continue
            for suffix in (".delta", ".json", ".lock"):
                p.with_suffix(suffix).unlink(missing_ok=True)
            total -= size
            count -= 1


_RECORDED = ("size", "sha256", "carried", "reused", "full_size", "name", "version")
