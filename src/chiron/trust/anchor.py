"""The trust anchor as a value: root metadata or its sha256 obtained out of band, a host's trusted
metadata, or trust on first use (explicit, never a default); and the anchor the command-line
options name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from chiron.archive.reader import read_file
from chiron.core.text import printable
from chiron.errors import UsageError
from chiron.trust.metadata import MAX_ROOT


@dataclass(frozen=True)
class RootFile:
    """Root metadata obtained out of band (``--root FILE``)."""

    data: bytes


@dataclass(frozen=True)
class RootFingerprint:
    """The sha256 of a root metadata file obtained out of band (``--root-sha256``); lower-case hex."""

    sha256: str

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise UsageError(f"--root-sha256: {printable(self.sha256)} is not 64 hexadecimal digits")


@dataclass(frozen=True)
class HostTrust:
    """A host's trusted metadata instead of a root anchor (install/upgrade).

    The directory is read, never modified. ``reference_time`` replaces the local clock for expiry
    checks (the host's persisted time floor). ``allow_rollback`` starts from the trusted root only,
    so older timestamp/snapshot/targets versions are accepted (an explicit operator downgrade).
    """

    metadata_dir: Path
    reference_time: datetime | None = None
    allow_rollback: bool = False


@dataclass(frozen=True)
class TrustOnFirstUse:
    """No anchor: the archive's own ``1.root.json`` is trusted. Explicit, so that it is never a default
    by accident; the result says so in its anchor, a notice and a warning."""


Anchor = RootFile | RootFingerprint | HostTrust | TrustOnFirstUse


def anchor_from_options(
    root_file: Path | None, root_sha256: str | None, *, trust_on_first_use: bool = False, required: bool = False
) -> Anchor:
    """The anchor the command-line options name. With ``required`` (install), having none is a usage
    error unless trust on first use was asked for explicitly."""
    if root_file is not None and root_sha256 is not None:
        raise UsageError("give --root or --root-sha256, not both")
    if trust_on_first_use and (root_file is not None or root_sha256 is not None):
        raise UsageError("--trust-on-first-use means no anchor: give it without --root and --root-sha256")
    if root_sha256 is not None:
        if len(root_sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in root_sha256):
            raise UsageError(f"--root-sha256: {printable(root_sha256)} is not 64 hexadecimal digits")
        return RootFingerprint(root_sha256.lower())
    if root_file is not None:
        return RootFile(read_file(root_file, MAX_ROOT, "--root"))
    if required and not trust_on_first_use:
        raise UsageError(
            "no trust anchor: nothing would tie this archive to your signers",
            hint="pass --root FILE or --root-sha256 HEX obtained out of band; or --trust-on-first-use to "
            "trust the archive's own root deliberately (the host is then pinned to it)",
        )
    return TrustOnFirstUse()
