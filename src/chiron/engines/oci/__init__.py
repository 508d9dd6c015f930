"""Fleet distribution through the enclave's OCI registry: publish an appliance as an OCI artifact,
pull it back byte for byte fetching only what a host lacks (docs/oci.md, ADR 0008)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from chiron.engines.host import KEPT_APPLIANCE, Paths
from chiron.engines.oci.artifact import tag_for
from chiron.engines.oci.publish import PublishOptions, PublishResult, publish
from chiron.engines.oci.pull import PullOptions, PullResult, pull
from chiron.sources.oci import Access, is_oci, parse_reference

__all__ = [
    "Access",
    "PublishOptions",
    "PublishResult",
    "PullOptions",
    "PullResult",
    "is_oci",
    "publish",
    "pull",
    "pull_for_host",
    "tag_for",
]


def pull_for_host(
    source: str, prefix: Path, state_dir: Path | None, access: Access, *, jobs: int = 4, show_progress: bool = False
) -> Path:
    """Pull ``source`` for ``install``/``upgrade`` on a host: into STATE/oci (partial blobs stay there
    for a resumed run; the host's own staging is swept by every operation), reusing every piece of the
    appliances the host kept for its releases. Not verified here: the install or upgrade that follows
    verifies the file against the host's trust, exactly as a file given on the command line."""
    paths = Paths.make(prefix, state_dir)
    ref = parse_reference(source)
    kept = sorted(paths.releases.glob(f"*/{KEPT_APPLIANCE}")) if paths.releases.is_dir() else []
    paths.state.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the host engine makes it
    staging = paths.state / "oci"
    output = staging / f"pulled-{hashlib.sha256(str(ref).encode()).hexdigest()[:16]}.pex"
    opts = PullOptions(
        source=source,
        output=output,
        access=access,
        have=kept,
        staging=staging,
        jobs=jobs,
        verify=False,
        signature=False,
        show_progress=show_progress,
    )
    return pull(opts).output
