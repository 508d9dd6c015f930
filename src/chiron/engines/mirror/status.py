"""``mirror status``: what a store holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chiron.errors import UsageError

from .store import Store, root_info


def status(store_dir: Path) -> dict[str, Any]:
    """What a store holds: the appliance, its versions, the root fingerprints to publish, and the
    artifacts on disk."""
    store = Store(store_dir.absolute())
    state = store.state()
    if state is None:
        raise UsageError(f"{store.root}: not a mirror store (no state.json)", hint="run chiron mirror refresh first")
    wheels = [p for p in store.artifacts.glob("sha256/*/*") if p.is_file()]
    blobs = [p for p in store.oci.glob("blobs/sha256/*") if p.is_file()]
    chain = store.root_chain()
    return {
        "schema": "chiron.mirror-status/1",
        "store": str(store.root),
        "name": state.name,
        "spec": state.spec,
        "keys": state.keys,
        "latest": state.latest.as_json(),
        "versions": [v.metadata_version for v in state.versions],
        "artifacts": len(wheels),
        "artifact_bytes": sum(p.stat().st_size for p in wheels),
        "image_blobs": len(blobs),
        "image_bytes": sum(p.stat().st_size for p in blobs),
        **(root_info(chain) if chain else {}),
    }
