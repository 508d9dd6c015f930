"""The one way chiron runs an external program: probe it exists, bound it by a timeout, and turn
every failure into an actionable EnvironmentProblem naming the program."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chiron.errors import EnvironmentProblem

_HINTS = {
    "pip": "install pip for this interpreter (python3 -m ensurepip) or run chiron from a virtualenv",
    "pex": "install chiron's build extra: pip install 'chiron[build]'",
    "shiv": "install chiron's build extra: pip install 'chiron[build]'",
    "ssh-keygen": "install the openssh-client package",
    "uv": "install uv (pip install uv) or leave it out to use pip",
    "docker": "install the docker.io package and start dockerd",
}


@dataclass(frozen=True)
class Program:
    """A resolved command prefix, e.g. ``[python, -m, pip]`` or ``[/usr/bin/ssh-keygen]``."""

    name: str
    argv: tuple[str, ...]


def find_program(name: str, *, module: str | None = None) -> Program:
    """Locate ``name``: as ``python -m module`` of this interpreter when importable, else on PATH."""
    if module is not None:
        import importlib.util

        if importlib.util.find_spec(module) is not None:
            return Program(name, (sys.executable, "-m", module))
    # The executable next to this interpreter first: a venv's tools without the venv on PATH.
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return Program(name, (str(sibling),))
    found = shutil.which(name)
    if found is None:
        raise EnvironmentProblem(f"required program '{name}' was not found", hint=_HINTS.get(name))
    return Program(name, (found,))


def run(
    program: Program,
    args: Sequence[str],
    *,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
    what: str = "",
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion; raise EnvironmentProblem with its last error lines on failure."""
    argv = [*program.argv, *args]
    full_env = dict(os.environ if env is None else env)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            input=input_bytes,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            f"{program.name} did not finish within {timeout:.0f} s{': ' + what if what else ''}",
            hint="check network reachability of the index, or raise the timeout",
        ) from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot run {program.name}: {exc.strerror}", hint=_HINTS.get(program.name)) from None
    if proc.returncode != 0:
        tail = _tail(proc.stderr or proc.stdout)
        raise EnvironmentProblem(
            f"{program.name} failed (exit {proc.returncode}){' ' + what if what else ''}: {tail}",
        )
    return proc


def _tail(data: bytes, lines: int = 3) -> str:
    text = data.decode("utf-8", "replace").strip().splitlines()
    useful = [line.strip() for line in text if line.strip() and not line.startswith("  ")] or text
    return " | ".join(useful[-lines:]) if useful else "(no output)"
