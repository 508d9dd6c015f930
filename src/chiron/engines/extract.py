"""Extract what an appliance says about itself: its spec, its lock (pylock.toml and the requirements
files) and its SBOM, for example to build the next release after the build host is lost.

By default the appliance is verified first and every file is copied through the verified handle's
checked reads (re-hashed against the signed targets). ``verify=False`` is the explicit way to read
an appliance that does not verify any more (expired metadata, a lost root): the files are then only
what the archive holds, which the result says. Either way the files appear together or not at all:
they are written into a temporary directory beside DIR, which is renamed to DIR at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive.reader import ArchiveReader
from chiron.core.fs import copy_range, fsync_dir
from chiron.engines.verify import verified
from chiron.errors import FormatError, UsageError

SPEC = "spec/appliance.toml"
PYLOCK = "lock/pylock.toml"
SBOM = "sbom/cyclonedx.json"


def wanted(name: str) -> bool:
    """Whether a member is one that extract writes out."""
    if name in (SPEC, PYLOCK, SBOM):
        return True
    rest = name.removeprefix("lock/requirements-")
    return rest != name and rest.endswith(".txt") and "/" not in rest


@dataclass
class ExtractResult:
    """What was written where, and how far it can be trusted."""

    archive: Path
    directory: Path
    files: list[str] = field(default_factory=list)  # member names, also their paths under directory
    verified: bool = False
    trust_anchor: str = ""
    root_fingerprint: str = ""
    name: str | None = None
    version: str | None = None
    notices: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.extract/1",
            "archive": str(self.archive),
            "directory": str(self.directory),
            "files": self.files,
            "verified": self.verified,
            "trust_anchor": self.trust_anchor,
            "root_fingerprint": self.root_fingerprint,
            "appliance": {"name": self.name, "version": self.version},
            "notices": self.notices,
        }


def _check_destination(directory: Path) -> None:
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise UsageError(f"{directory}: exists and is not a directory", hint="give a new directory with -o")
    if directory.is_dir() and any(directory.iterdir()):
        raise UsageError(
            f"{directory}: is not empty; extract does not mix its files with others",
            hint="give a new or empty directory with -o",
        )


def extract(
    archive: Path,
    directory: Path,
    *,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    verify: bool = True,
) -> ExtractResult:
    """Write the spec, lock and SBOM of ``archive`` into ``directory`` (new or empty)."""
    _check_destination(directory)
    result = ExtractResult(archive=archive, directory=directory)
    if not verify:
        if root_file is not None or root_sha256 is not None:
            raise UsageError("--unverified and --root/--root-sha256 exclude each other")
        with ArchiveReader(archive) as reader:
            names = sorted(m.name for m in reader.layout.members if wanted(m.name))
            result.notices.append(f"{archive} was NOT verified: the files are what it holds, not what was signed")

            def copy_unchecked(name: str, dest: Path) -> None:
                offset, length = reader.region(name)
                if not copy_range(reader.fd, offset, length, dest, None):
                    raise FormatError(f"member {name}: the file ends before it does")

            _write(directory, names, copy_unchecked)
        result.files = names
        return result
    with verified(archive, root_file=root_file, root_sha256=root_sha256) as report:
        appliance = report.verified  # a VerificationError listing every problem unless verified
        names = sorted(n for n in appliance.targets if wanted(n))
        _write(directory, names, appliance.copy)
        result.verified = True
        result.trust_anchor, result.root_fingerprint = report.trust_anchor, report.root_fingerprint
        result.name, result.version, result.notices = report.name, report.version, list(report.notices)
    result.files = names
    return result


def _write(directory: Path, names: list[str], copy: Callable[[str, Path], None]) -> None:
    """Copy each member into a temporary directory beside ``directory``, then rename it into place."""
    if SPEC not in names:
        raise FormatError(f"member {SPEC}: the appliance carries no spec")
    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
    try:
        for name in names:
            dest = stage / name
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            copy(name, dest)
        # mkdtemp makes it 0700; the files are public facts about the appliance, like the appliance.
        os.chmod(stage, 0o755)  # noqa: S103
        # rename(2) replaces an empty directory, and nothing else: a file created at DIR meanwhile
        # makes it fail rather than be mixed with.
        os.rename(stage, directory)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    fsync_dir(parent)
