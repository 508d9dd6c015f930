"""The lock as chiron holds it: packages, their artifacts, and what each environment installs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Artifact:
    """One file of a package: a wheel or (only when the spec allows) an sdist."""

    filename: str
    url: str
    sha256: str
    size: int | None = None

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


@dataclass
class LockedPackage:
    name: str
    version: str
    index: str | None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    environments: set[str] = field(default_factory=set)
    marker: str | None = None
    yanked: bool = False  # known only when resolved (pip's report); a lock file does not record it


@dataclass
class Lock:
    """Packages with their artifacts, and which artifact each environment installs."""

    packages: list[LockedPackage]
    selection: dict[str, dict[str, Artifact]]  # env name -> package name -> artifact

    def artifacts(self) -> list[Artifact]:
        """Every distinct artifact, by filename (a py3-none-any wheel serves several environments)."""
        seen: dict[str, Artifact] = {}
        for per_env in self.selection.values():
            for art in per_env.values():
                seen.setdefault(art.filename, art)
        return [seen[k] for k in sorted(seen)]
