"""Build chiron itself as a runnable zip (pex by default, shiv as the alternative).

The zip is built offline from a directory of wheels (chiron's own wheel and its dependencies) and
then rewritten by ``archive.toolzip.normalize_zip`` so that the same inputs give the same bytes
(``sources.toolcache`` caches it). pex and shiv run in a private, empty working directory: a folder
named ``chiron`` in the caller's working directory (a checkout) would otherwise be taken for the
requirement ``chiron``.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from chiron import __version__
from chiron.archive.layout import ZipTime
from chiron.core import proc as _proc
from chiron.core.models import TargetEnvironment
from chiron.errors import EnvironmentProblem, UsageError

ToolFormat = Literal["pex", "shiv"]
ENTRY_POINT = "chiron.cli:main"
# Fixed zip entry times (as pex does): the tool zip then depends only on the tool's wheels, so it is
# reproducible and cacheable; the build time lives in appliance.json and the metadata.
ZIP_TIME: ZipTime = (1980, 1, 1, 0, 0, 0)


def _clean_env(tmp: Path) -> dict[str, str]:
    # The build must not pick up a user's pip config (extra indexes, find-links) or PEX/shiv caches.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PEX_", "SHIV_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_NO_INPUT"] = "1"
    env["PEX_ROOT"] = str(tmp / "pex-root")
    return env


def tool_platforms(environments: Iterable[TargetEnvironment]) -> list[str]:
    """pex platforms for the environments the build interpreter does not cover.

    The tool runs on the target hosts (``./chiron.pex verify``, the installed ``bin/chiron``), so it
    must carry compiled dependencies (cryptography's cffi, pydantic-core) for each environment's
    Python, not only for the interpreter that builds it.
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    machine = platform.machine()
    out = set()
    for env in environments:
        plat = env.platforms[0]
        if env.implementation == sys.implementation.name[:2] and env.python_version == here and plat.endswith(machine):
            continue
        abi = env.abis[0] if env.abis else f"{env.implementation}{env.nodot}"
        out.add(f"{_legacy_manylinux(plat)}-{env.implementation}-{env.python_version}.0-{abi}")
    return sorted(out)


def platforms_for(fmt: ToolFormat, environments: list[TargetEnvironment]) -> tuple[list[str], list[str]]:
    """The extra platforms the tool zip is built for, and a note when the format cannot serve them."""
    wanted = tool_platforms(environments)
    if fmt == "pex" or not wanted:
        return wanted, []
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [], [
        f"a shiv tool zip runs only on Python {here} (the build interpreter); for {', '.join(wanted)} "
        "chiron itself needs --format pex (the wheelhouse serves every environment either way)"
    ]


def _legacy_manylinux(tag: str) -> str:
    """The widest legacy name for a PEP 600 tag (manylinux_2_34_x86_64 -> manylinux2014_x86_64).

    pex resolves foreign platforms with its vendored pip, which predates PEP 600 and matches no
    wheel for a manylinux_X_Y platform; every glibc >= 2.17 host also runs manylinux2014 wheels.
    """
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    if m is None:
        return tag
    glibc = (int(m.group(1)), int(m.group(2)))
    for name, floor in (("manylinux2014", (2, 17)), ("manylinux2010", (2, 12)), ("manylinux1", (2, 5))):
        if glibc >= floor:
            return f"{name}_{m.group(3)}"
    return tag


def build_tool(fmt: ToolFormat, wheels: Path, out: Path, shebang: str, platforms: Iterable[str] = ()) -> None:
    """Build the tool zip into ``out`` from wheels in ``wheels`` (no index is contacted), for the build
    interpreter and, with the pex format, for each of ``platforms`` as well."""
    if not wheels.is_dir() or not any(wheels.glob("chiron-*.whl")):
        raise UsageError(
            f"{wheels}: no wheel of chiron itself to build the tool from",
            hint="pass --tool-wheels DIR holding chiron's wheel and its dependencies ('make tool-wheels')",
        )
    if not any(wheels.glob("fastapi-*.whl")):
        raise UsageError(
            f"{wheels}: the tool wheels lack chiron's serve extra (fastapi, uvicorn, ...)",
            hint="rebuild them with 'make tool-wheels' (pip wheel '.[serve]')",
        )
    if fmt not in ("pex", "shiv"):  # pragma: no cover - the command line restricts the choice
        raise UsageError(f"unknown format {fmt}")
    wheels, out = wheels.absolute(), out.absolute()  # the tools run in another working directory
    platforms = list(platforms)
    with tempfile.TemporaryDirectory(prefix="chiron-tool-") as tmp_s:
        tmp = Path(tmp_s)
        cwd = tmp / "cwd"
        cwd.mkdir()
        if fmt == "shiv":
            shiv = _proc.find_program("shiv", module="shiv")
            args = _shiv_args(wheels, out, shebang)
            _proc.run(shiv, args, env=_clean_env(tmp), cwd=cwd, timeout=1800, what="building the shiv tool zip")
            return
        pex = _proc.find_program("pex", module="pex")
        try:
            _proc.run(
                pex,
                _pex_args(wheels, out, shebang, platforms),
                env=_clean_env(tmp),
                cwd=cwd,
                timeout=1800,
                what="building the pex tool zip",
            )
        except EnvironmentProblem as exc:
            if platforms and "No matching distribution" in exc.message:
                raise EnvironmentProblem(
                    f"{wheels}: the tool wheels lack a wheel for one of the platforms the tool must run on "
                    f"({', '.join(platforms)}): {exc.message.splitlines()[-1]}",
                    hint="add them with 'pip download --only-binary=:all: --no-deps --python-version X.Y "
                    "--platform PLATFORM -r requirements/tool-constraints.txt -d TOOL_WHEELS' "
                    "(make tool-wheels does this for CPython 3.12 on x86_64)",
                ) from None
            raise


def _pex_args(wheels: Path, out: Path, shebang: str, platforms: list[str]) -> list[str]:
    args = [f"chiron[serve]=={__version__}", "--no-pypi", "--find-links", str(wheels), "--entry-point", ENTRY_POINT]
    args += ["--venv", "--python-shebang", shebang, "--python", sys.executable, "--no-emit-warnings", "-o", str(out)]
    for plat in platforms:
        args += ["--platform", plat]
    return args


def _shiv_args(wheels: Path, out: Path, shebang: str) -> list[str]:
    args = ["--output-file", str(out), "--entry-point", ENTRY_POINT, "--python", shebang, "--reproducible"]
    return [*args, "--no-index", "--find-links", str(wheels), f"chiron[serve]=={__version__}"]
