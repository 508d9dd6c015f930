"""Platform and interpreter tags, and marker environments, for a target environment."""

from __future__ import annotations

import re

from packaging.tags import Tag, compatible_tags, cpython_tags, generic_tags

from chiron.core.models import TargetEnvironment
from chiron.errors import UsageError


def expand_platform(tag: str) -> list[str]:
    """A manylinux tag also admits every older glibc baseline of the same architecture."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
    lm = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag)
    if lm:
        major, minor = legacy[lm.group(1)]
        arch = lm.group(2)
    elif m:
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
    else:
        return [tag]
    out = [f"manylinux_{major}_{y}_{arch}" for y in range(minor, -1, -1)]
    out += [f"{name}_{arch}" for name, (ma, mi) in legacy.items() if (ma, mi) <= (major, minor)]
    return out


def env_platforms(env: TargetEnvironment) -> list[str]:
    out: list[str] = []
    for tag in env.platforms:
        for t in expand_platform(tag):
            if t not in out:
                out.append(t)
    return out


def env_tags(env: TargetEnvironment) -> set[Tag]:
    """Every wheel tag an interpreter of this environment accepts."""
    ver = tuple(int(x) for x in env.python_version.split("."))
    platforms = env_platforms(env)
    if env.implementation == "cp":
        tags = list(cpython_tags(ver, abis=env.abi_list(), platforms=platforms))
    else:
        interp = f"pp{env.nodot}"
        tags = list(generic_tags(interp, abis=env.abi_list(), platforms=platforms))
    tags += list(compatible_tags(ver, f"{env.implementation}{env.nodot}", platforms))
    return set(tags)


def marker_env(env: TargetEnvironment) -> dict[str, str]:
    """The marker variables an environment pins down (what PEP 751 markers are evaluated against)."""
    impl = {"cp": ("cpython", "CPython"), "pp": ("pypy", "PyPy")}[env.implementation]
    arch = (re.search(r"(x86_64|aarch64|i686|armv7l|ppc64le|s390x|riscv64)$", p) for p in env.platforms)
    machine = next((m.group(1) for m in arch if m), "")
    return {
        "python_version": env.python_version,
        "python_full_version": f"{env.python_version}.0",
        "implementation_name": impl[0],
        "platform_python_implementation": impl[1],
        "sys_platform": "linux" if any("linux" in p for p in env.platforms) else "",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_system": "Linux",
        "platform_release": "",
        "platform_version": "",
        "implementation_version": f"{env.python_version}.0",
        "extra": "",
    }


def requirements_for(requirements: list[str], env: TargetEnvironment) -> list[str]:
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise UsageError(f"python.requirements: '{text}' is not a valid requirement: {exc}") from None
        if req.marker is not None and not req.marker.evaluate(marker_env(env)):
            continue
        req.marker = None
        out.append(str(req))
    return out
