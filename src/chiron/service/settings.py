"""What one ``chiron serve`` serves and how: sources of appliances, trust anchor, security switches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    """The service's configuration (``chiron serve`` options); immutable while it runs."""

    db: Path
    cache_dir: Path
    store: Path | None = None  # a mirror store: its appliances, and refresh jobs on it
    appliances: Path | None = None  # a directory of appliance files (*.pex, *.pyz)
    prefix: Path | None = None  # an enclave host's prefix: the appliances its releases kept
    state_dir: Path | None = None
    root_file: Path | None = None  # trust anchor for verifying what is served
    root_sha256: str | None = None
    name: str | None = None  # the appliance /simple/ and /appliances/latest stand for
    anonymous_read: bool = False  # index, files and appliances without a token
    public_metrics: bool = False  # /metrics without a token
    x_accel_redirect: str | None = None  # nginx internal location prefix, e.g. "/_chiron/"
    refresh_every: float | None = None  # seconds between scheduled refresh jobs (needs store)
    tool_wheels: Path | None = None  # for refresh jobs
    max_body: int = MIB  # request bodies, except inventories
    max_inventory: int = 16 * MIB  # POST /v1/deltas
    rescan_every: float = 10.0  # seconds between looks for new or changed appliances
    silent_after: float = 86400.0  # a host without a receipt for this long is "silent"
    delta_cache_bytes: int = 8 << 30
    json_log: bool = True  # one JSON object per request (on stderr, or in access_log)
    access_log: Path | None = None

    @property
    def sources(self) -> list[Path]:
        return [p for p in (self.store, self.appliances, self.prefix) if p is not None]
