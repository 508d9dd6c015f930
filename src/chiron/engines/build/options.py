"""What a build takes and what it gives back, and the inputs every caller computes the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.models import ImageRef
from chiron.core.spec import LoadedSpec
from chiron.errors import UsageError
from chiron.sources.tool import ToolFormat
from chiron.sources.toolcache import ToolZip


@dataclass(frozen=True)
class BuildOptions:
    spec: Path
    output: Path
    tool_wheels: Path
    cache_dir: Path
    tool_format: ToolFormat = "pex"
    source_date_epoch: int | None = None
    metadata_version: int | None = None  # default: the build time in seconds (always increasing)
    shebang: str = "/usr/bin/env python3"
    show_progress: bool = True
    # Rebuilds from an appliance (rebuild.py) take these from the archive instead of the spec's paths.
    base_dir: Path | None = None  # where the spec's relative paths (keys) resolve; default: its folder
    root_chain: Path | None = None  # instead of trust.root
    lock_file: Path | None = None  # instead of python.lock / resolving
    files_dir: Path | None = None  # [[files]] sources as files_dir/DEST
    tool: ToolZip | None = None  # an already normalized tool zip, instead of building one
    images: tuple[Path, list[dict[str, Any]]] | None = None  # an OCI layout and its recorded images
    appliance_version: str | None = None  # instead of the spec's (a mirror release; a rebuild's record)
    # A mirror refresh signs the store's own next version and a rebuild an existing one: neither forks.
    check_store: bool = True
    # Only for drills and tests of the verifier: sign metadata that is already expired.
    allow_expired: bool = False


@dataclass
class BuildResult:
    output: Path
    signature: Path
    size: int
    name: str
    version: str
    targets: int
    wheels: int
    root_fingerprint: str
    downloaded: int
    reused: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "signature": str(self.signature),
            "size": self.size,
            "name": self.name,
            "version": self.version,
            "targets": self.targets,
            "wheels": self.wheels,
            "root_fingerprint": self.root_fingerprint,
            "downloaded": self.downloaded,
            "reused": self.reused,
            "seconds": round(self.seconds, 3),
        }


def image_refs(loaded: LoadedSpec) -> list[ImageRef]:
    """The spec's images with OCI-layout paths resolved against the spec's folder."""
    return [
        i.model_copy(update={"path": str(loaded.resolve_path(i.path, f"images[{n}].path"))}) if i.path else i
        for n, i in enumerate(loaded.spec.images)
    ]


def source_date_epoch(explicit: int | None) -> int | None:
    if explicit is not None:
        return explicit
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None:
        return None
    try:
        return int(env)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not an integer number of seconds") from None


# ---------------------------------------------------------------- the build
