"""Build chiron itself as a runnable zip (pex by default, shiv as the alternative).

The zip is built offline from a directory of wheels (chiron's own wheel and its dependencies) and
then rewritten by ``_archive.normalize_zip`` so that the same inputs give the same bytes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Literal

from chiron import __version__, _proc
from chiron.errors import UsageError

ToolFormat = Literal["pex", "shiv"]
ENTRY_POINT = "chiron._cli:main"


def _clean_env(tmp: Path) -> dict[str, str]:
    # The build must not pick up a user's pip config (extra indexes, find-links) or PEX/shiv caches.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PEX_", "SHIV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_NO_INPUT"] = "1"
    env["PEX_ROOT"] = str(tmp / "pex-root")
    return env


def build_tool(fmt: ToolFormat, wheels: Path, out: Path, shebang: str) -> None:
    """Build the tool zip into ``out`` from wheels in ``wheels`` (no index is contacted)."""
    if not wheels.is_dir() or not any(wheels.glob("chiron-*.whl")):
        raise UsageError(
            f"{wheels}: no wheel of chiron itself to build the tool from",
            hint="pass --tool-wheels DIR holding chiron's wheel and its dependencies ('make tool-wheels')",
        )
    req = f"chiron=={__version__}"
    with tempfile.TemporaryDirectory(prefix="chiron-tool-") as tmp_s:
        tmp = Path(tmp_s)
        env = _clean_env(tmp)
        if fmt == "pex":
            pex = _proc.find_program("pex", module="pex")
            args = [
                req,
                "--no-pypi",
                "--find-links",
                str(wheels),
                "--entry-point",
                ENTRY_POINT,
                "--venv",
                "--python-shebang",
                shebang,
                "--python",
                sys.executable,
                "--no-emit-warnings",
                "-o",
                str(out),
            ]
            _proc.run(pex, args, env=env, timeout=1800, what="building the pex tool zip")
        elif fmt == "shiv":
            shiv = _proc.find_program("shiv", module="shiv")
            args = [
                "--output-file",
                str(out),
                "--entry-point",
                ENTRY_POINT,
                "--python",
                shebang,
                "--reproducible",
                "--no-index",
                "--find-links",
                str(wheels),
                req,
            ]
            _proc.run(shiv, args, env=env, timeout=1800, what="building the shiv tool zip")
        else:  # pragma: no cover - typer restricts the choice
            raise UsageError(f"unknown format {fmt}")
