"""The health check of a new release, before the switch: every distribution importable, the
dependencies consistent, then the spec's own hook."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from chiron.core import proc as _proc
from chiron.core.models import HostSection
from chiron.engines.host.release import find_uv
from chiron.errors import EnvironmentProblem

_IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, json, sys
bad = []
for name in sys.argv[1:]:
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        bad.append(f"{name}: not installed")
        continue
    tops = (d.read_text("top_level.txt") or "").split()
    if not tops:
        tops = sorted({f.parts[0].removesuffix(".py") for f in (d.files or [])
                       if f.parts and f.parts[0] not in ("..", "bin")
                       and not f.parts[0].endswith((".dist-info", ".data", ".pth"))
                       and (len(f.parts) > 1 or f.parts[0].endswith(".py"))})
    for t in tops:
        if t.isidentifier() and not t.startswith("_"):
            try:
                importlib.import_module(t)
            except Exception as e:
                bad.append(f"{name}: import {t}: {type(e).__name__}: {e}")
print(json.dumps(bad))
"""


def health_check(hostspec: HostSection, slot: Path, distributions: list[str]) -> None:
    """Every distribution of the appliance importable, dependencies consistent, then the spec's hook."""
    py = str(slot / "venv" / "bin" / "python")
    try:
        proc = subprocess.run(
            [py, "-c", _IMPORT_CHECK, *distributions], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem("health check: importing the distributions took over 600 s") from None
    if proc.returncode != 0:
        raise EnvironmentProblem(f"health check: the new environment cannot run Python: {proc.stderr.strip()[-300:]}")
    bad = json.loads(proc.stdout.strip().splitlines()[-1])
    if bad:
        raise EnvironmentProblem(f"health check failed: {bad[0]}" + (f" (and {len(bad) - 1} more)" if bad[1:] else ""))
    uv = find_uv()
    if uv is not None:
        _proc.run(uv, ["pip", "check", "--python", py], timeout=300, what="in the health check's dependency check")
    if hostspec.health_check:
        _run_hook(hostspec, slot)


def _run_hook(hostspec: HostSection, slot: Path) -> None:
    env = dict(os.environ, CHIRON_RELEASE=str(slot), PATH=f"{slot / 'venv' / 'bin'}:{os.environ.get('PATH', '')}")
    try:
        hook = subprocess.run(
            hostspec.health_check,
            env=env,
            capture_output=True,
            text=True,
            timeout=hostspec.health_check_timeout,
            check=False,
        )
    except FileNotFoundError:
        raise EnvironmentProblem(f"health check hook: {hostspec.health_check[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"health check hook did not finish within {hostspec.health_check_timeout} s") from None
    if hook.returncode != 0:
        tail = (hook.stderr or hook.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise EnvironmentProblem(f"health check hook failed (exit {hook.returncode}): {tail[0]}")
