"""The hand-over of ``./new.pex upgrade`` to the INSTALLED tool: a new archive's own code must not be
what decides to trust it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from chiron.core.runtime import self_archive


def installed_tool(prefix: Path) -> Path | None:
    """The installed tool an upgrade must be run by, when this process runs from another archive
    (None: this process is the installed tool, or not an archive, or nothing is installed)."""
    me, installed = self_archive(), prefix / "bin" / "chiron"
    if me is None or not installed.exists() or me == installed.resolve() or os.environ.get("CHIRON_HANDED_OVER"):
        return None
    return installed


def hand_over_to_installed(
    prefix: Path,
    archive: Path,
    state_dir: Path | None,
    allow_downgrade: bool,
    installer: str,
    wait: float,
    js: bool,
    notice: Callable[[str], None],
    images: str = "load",
    registry: str | None = None,
    global_args: list[str] | None = None,
    trial_until: str | None = None,
) -> None:
    """Run the upgrade with the INSTALLED tool when invoked from another archive (``./new.pex upgrade``):
    a new archive's own code must not be what decides to trust it.

    ``global_args`` (--log-format, --trace-file, --verbose as given) go before the command's name,
    where every chiron, also an older installed one, accepts them."""
    installed = installed_tool(prefix)
    if installed is None:
        return
    notice(f"handing over to the installed tool {installed} (the new archive does not verify itself)")
    argv = [
        str(installed),
        *(global_args or []),
        "upgrade",
        str(archive),
        "--prefix",
        str(prefix),
        "--installer",
        installer,
        "--wait",
        str(wait),
    ]
    argv += ["--state-dir", str(state_dir)] if state_dir else []
    argv += ["--allow-downgrade"] if allow_downgrade else []
    argv += ["--images", images] + (["--registry", registry] if registry else [])
    argv += ["--trial-until", trial_until] if trial_until else []
    argv += ["--json"] if js else []
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(installed, argv, {**os.environ, "CHIRON_HANDED_OVER": "1"})  # noqa: S606 - argv, no shell
