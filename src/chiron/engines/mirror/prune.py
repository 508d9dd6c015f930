"""``mirror prune``: drop older appliances and the content only they used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chiron.archive.delta import base_content
from chiron.core.fs import write_atomic
from chiron.errors import UsageError

from .store import Store


def prune(store_dir: Path, keep: int) -> dict[str, Any]:
    """Drop all but the newest ``keep`` appliances, and the artifacts and image blobs only they used.

    The lock history and the version list stay (locks are small and are the record of what was
    shipped); pruned versions are marked ``"pruned": true``. Content is kept by sha256 if any kept
    appliance signs it as a target, so a kept appliance can always be rebuilt from the store.
    """
    if keep < 1:
        raise UsageError("--keep must be at least 1: the newest appliance is what the next delta is made from")
    store = Store(store_dir.absolute())
    with store.locked("mirror prune"):
        state = store.state()
        if state is None:
            raise UsageError(f"{store.root}: not a mirror store (no state.json)")
        versions = state.versions
        for v in versions[:-1]:  # a file an interrupted prune already removed: record it as pruned
            if not v.pruned and not (store.root / v.file).is_file():
                v.pruned = True
        live = [v for v in versions if not v.pruned]
        drop, kept = live[:-keep], live[-keep:]
        needed: set[str] = set()
        for v in kept:
            needed |= base_content(store.root / v.file)
        doomed = [store.root / (v.file + suffix) for v in drop for suffix in ("", ".sig")]
        doomed += [(store.root / v.file).with_suffix(".delta") for v in drop]
        content = [
            f for f in [*store.artifacts.glob("sha256/*/*"), *store.oci.glob("blobs/sha256/*")] if f.name not in needed
        ]
        doomed += content
        for record in store.artifacts.glob("tool/*.json"):
            if _tool_sha256(record) not in needed:
                doomed += [record.with_suffix(".zip"), record]
        # Record first, delete after: an interrupted prune leaves files to remove, never a state or an
        # OCI index that names what is gone.
        for v in drop:
            v.pruned = True
        store.write_state(state)
        _prune_oci_index(store.oci, needed)
        freed = 0
        for f in doomed:
            if f.is_file():
                freed += f.stat().st_size
                f.unlink()
    return {
        "schema": "chiron.mirror-prune/1",
        "store": str(store.root),
        "kept": [v.metadata_version for v in kept],
        "pruned": [v.metadata_version for v in drop],
        "files_removed": len(content),
        "bytes_freed": freed,
    }


def _tool_sha256(record: Path) -> str | None:
    """The zip sha256 a tool-cache record names (None for a damaged record: its zip is not needed)."""
    try:
        sha = json.loads(record.read_bytes()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return sha if isinstance(sha, str) else None


def _prune_oci_index(layout: Path, keep: set[str]) -> None:
    """Keep only index.json entries whose manifest stays, so the layout stays valid for skopeo."""
    index_file = layout / "index.json"
    if not index_file.is_file():
        return
    index = json.loads(index_file.read_text())
    index["manifests"] = [m for m in index.get("manifests", []) if m["digest"].partition(":")[2] in keep]
    write_atomic(index_file, json.dumps(index).encode())
