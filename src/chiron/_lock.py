"""Resolve a spec to exact artifacts per target environment, and read/write the lock.

Resolution runs real pip (``pip install --dry-run --report``) once per target environment with that
environment's Python version, implementation, ABIs and platform tags; pip's choices, with their
sha256, become the lock. The lock is written as PEP 751 ``pylock.toml`` (the record) and as one pip
requirements file with ``--hash`` per environment (what an installer on the host consumes).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.markers import InvalidMarker, Marker
from packaging.tags import Tag, compatible_tags, cpython_tags, generic_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from chiron import _proc
from chiron.errors import EnvironmentProblem, LockError, UsageError
from chiron.models import ApplianceSpec, TargetEnvironment

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


# ---------------------------------------------------------------- tags


def _expand_platform(tag: str) -> list[str]:
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
        for t in _expand_platform(tag):
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


# ---------------------------------------------------------------- resolution


def resolve(spec: ApplianceSpec, spec_dir: Path) -> Lock:
    """Resolve the spec's requirements once per environment with real pip; return the lock."""
    py = spec.python
    if not py.requirements:
        raise UsageError("the spec has no python.requirements to resolve (it uses a lock)")
    pip = _proc.find_program("pip", module="pip")
    packages: dict[tuple[str, str], LockedPackage] = {}
    selection: dict[str, dict[str, Artifact]] = {}
    host_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="chiron-resolve-") as tmp:
        for env in spec.environments:
            # pip evaluates requirement markers against the interpreter it runs on, not the target:
            # evaluate top-level markers for the target environment here and pass plain requirements.
            reqs = Path(tmp) / f"requirements-{env.name}.in"
            reqs.write_text("\n".join(_for_env(py.requirements, env)) + "\n")
            report_path = Path(tmp) / f"report-{env.name}.json"
            args = [
                "--isolated",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--no-input",
                "--report",
                str(report_path),
                "-r",
                str(reqs),
            ]
            if py.allow_sdists:
                # pip cannot pick sdists for a foreign platform: only the running interpreter's own.
                if env.python_version != host_version:
                    raise UsageError(
                        f"environment {env.name}: python.allow_sdists needs a resolver running Python "
                        f"{env.python_version} (this is {host_version})",
                        hint="run chiron lock under that interpreter, or disallow sdists",
                    )
                args += ["--prefer-binary"]
            else:
                args += [
                    "--only-binary=:all:",
                    "--python-version",
                    env.python_version,
                    "--implementation",
                    env.implementation,
                ]
                for plat in env_platforms(env):
                    args += ["--platform", plat]
                for abi in env.abi_list():
                    args += ["--abi", abi]
            args += ["--index-url", py.index_url] if py.index_url else ["--no-index"]
            for link in py.find_links:
                args += ["--find-links", _link(link, spec_dir)]
            try:
                _proc.run(pip, args, timeout=1800, what=f"resolving for environment {env.name}")
            except EnvironmentProblem as exc:
                if "No matching distribution" in exc.message:
                    raise LockError(
                        f"environment {env.name}: {exc.message.split(': ', 1)[-1]}",
                        hint="no wheel fits this environment's tags; pin another version, add its platform, "
                        "or set python.allow_sdists = true",
                    ) from None
                raise
            report = json.loads(report_path.read_text())
            selection[env.name] = _from_report(report, env, packages, py.allow_sdists, py.index_url)
    return Lock(packages=sorted(packages.values(), key=lambda p: (p.name, p.version)), selection=selection)


def _for_env(requirements: list[str], env: TargetEnvironment) -> list[str]:
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


def _link(link: str, spec_dir: Path) -> str:
    if "://" in link:
        return link
    p = Path(link)
    return str(p if p.is_absolute() else (spec_dir / p).resolve())


def _from_report(
    report: dict[str, Any],
    env: TargetEnvironment,
    packages: dict[tuple[str, str], LockedPackage],
    sdists: bool,
    index_url: str | None,
) -> dict[str, Artifact]:
    chosen: dict[str, Artifact] = {}
    for item in report.get("install", []):
        meta, info = item["metadata"], item["download_info"]
        name, version = canonicalize_name(meta["name"]), meta["version"]
        url = info["url"]
        archive = info.get("archive_info", {})
        sha = archive.get("hashes", {}).get("sha256")
        if sha is None and str(archive.get("hash", "")).startswith("sha256="):
            sha = archive["hash"].split("=", 1)[1]
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        if not filename.endswith(".whl") and not sdists:
            raise LockError(f"{name} {version}: only an sdist ({filename}) is available and sdists are not allowed")
        if sha is None:
            # The index gave no hash; the file is hashed when fetched and that hash is recorded.
            sha = ""
        art = Artifact(filename=filename, url=url, sha256=sha)
        pkg = packages.setdefault((name, version), LockedPackage(name, version, index_url if "://" in url else None))
        pkg.artifacts.setdefault(filename, art)
        pkg.environments.add(env.name)
        pkg.yanked = pkg.yanked or bool(item.get("is_yanked"))
        chosen[name] = pkg.artifacts[filename]
    return chosen


def fill_hashes(lock: Lock, hashes: dict[str, tuple[str, int]]) -> None:
    """Record the sha256 and size measured at fetch time (filename -> (sha256, size))."""
    for pkg in lock.packages:
        for fname, art in list(pkg.artifacts.items()):
            if fname not in hashes:
                # No environment selects this artifact: it is not fetched, packed or recorded.
                del pkg.artifacts[fname]
                continue
            sha, size = hashes[fname]
            pkg.artifacts[fname] = Artifact(art.filename, art.url, sha, size)
    lock.packages = [p for p in lock.packages if p.artifacts]
    for per_env in lock.selection.values():
        for name, art in list(per_env.items()):
            sha, size = hashes[art.filename]
            per_env[name] = Artifact(art.filename, art.url, sha, size)


# ---------------------------------------------------------------- pylock.toml


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _art_toml(a: Artifact) -> str:
    size = f", size = {a.size}" if a.size is not None else ""
    return f"{{ name = {_q(a.filename)}, url = {_q(a.url)}{size}, hashes = {{ sha256 = {_q(a.sha256)} }} }}"


def write_pylock(lock: Lock, spec: ApplianceSpec) -> bytes:
    """The lock as PEP 751 ``pylock.toml``; deterministic for the same lock."""
    env_names = [e.name for e in spec.environments]
    envs = {e.name: e for e in spec.environments}
    lines = ['lock-version = "1.0"', 'created-by = "chiron"', ""]
    for pkg in lock.packages:
        lines.append("[[packages]]")
        lines.append(f"name = {_q(pkg.name)}")
        lines.append(f"version = {_q(pkg.version)}")
        if set(pkg.environments) != set(env_names):
            versions = sorted({envs[e].python_version for e in pkg.environments})
            others = {envs[e].python_version for e in env_names if e not in pkg.environments}
            if not others & set(versions):
                marker = " or ".join(f'python_version == "{v}"' for v in versions)
                lines.append(f"marker = {_q(marker)}")
        if pkg.index:
            lines.append(f"index = {_q(pkg.index)}")
        wheels = [a for a in pkg.artifacts.values() if a.is_wheel]
        sdists = [a for a in pkg.artifacts.values() if not a.is_wheel]
        if sdists:
            lines.append(f"sdist = {_art_toml(sdists[0])}")
        if wheels:
            lines.append("wheels = [")
            lines += [f"  {_art_toml(a)}," for a in sorted(wheels, key=lambda a: a.filename)]
            lines.append("]")
        lines.append("")
    lines.append("[tool.chiron.environments]")
    for env in env_names:
        sel = lock.selection.get(env, {})
        items = ", ".join(_q(f"{n}=={_version_of(lock, n, a)}") for n, a in sorted(sel.items()))
        lines.append(f"{_q(env)} = [{items}]")
    return ("\n".join(lines) + "\n").encode()


def _version_of(lock: Lock, name: str, art: Artifact) -> str:
    for pkg in lock.packages:
        if pkg.name == name and art.filename in pkg.artifacts:
            return pkg.version
    raise LockError(f"internal: {art.filename} belongs to no package")


def read_pylock(path: Path, spec: ApplianceSpec) -> Lock:
    """Read a PEP 751 lock (ours or another tool's) and choose each environment's artifact by tags."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise LockError(f"{path}: lock file not found", hint="run 'chiron lock SPEC' to create it") from None
    except UnicodeDecodeError:
        raise LockError(f"{path}: lock file is not UTF-8 text") from None
    return parse_pylock(text, spec.environments, allow_sdists=spec.python.allow_sdists, where=str(path))


def parse_pylock(text: str, environments: Iterable[TargetEnvironment], *, allow_sdists: bool, where: str) -> Lock:
    """Parse lock text and select, for every environment, the artifact of each package it installs."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"{where}: not a valid TOML lock: {exc}") from None
    if str(data.get("lock-version", "")).split(".")[0] != "1":
        raise LockError(f"{where}: lock-version {data.get('lock-version')!r} is not a PEP 751 1.x lock")
    packages: list[LockedPackage] = []
    for i, entry in enumerate(data.get("packages", [])):
        at = f"{where}: packages[{i}]"
        try:
            name, version = canonicalize_name(entry["name"]), str(entry["version"])
        except KeyError as exc:
            raise LockError(f"{at}: missing field {exc.args[0]}") from None
        pkg = LockedPackage(name, version, entry.get("index"), marker=entry.get("marker"))
        items = list(entry.get("wheels", []))
        if "sdist" in entry:
            if not allow_sdists:
                raise LockError(f"{at} ({name} {version}): is an sdist and python.allow_sdists is false")
            items.append(entry["sdist"])
        for j, w in enumerate(items):
            art = _read_artifact(w, f"{at}.wheels[{j}]")
            pkg.artifacts[art.filename] = art
        if not pkg.artifacts:
            raise LockError(f"{at} ({name} {version}): has no wheels (chiron installs from artifacts only)")
        packages.append(pkg)
    selection = _select(packages, environments, where)
    return Lock(packages=packages, selection=selection)


def _read_artifact(w: dict[str, Any], where: str) -> Artifact:
    url = w.get("url")
    name = w.get("name") or (unquote(urlsplit(url).path.rsplit("/", 1)[-1]) if url else None)
    sha = (w.get("hashes") or {}).get("sha256")
    if not name or not url:
        raise LockError(f"{where}: needs name and url")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise LockError(f"{where} ({name}): needs hashes.sha256 (64 hex digits)")
    size = w.get("size")
    return Artifact(filename=name, url=url, sha256=sha, size=int(size) if size is not None else None)


def _select(
    packages: Iterable[LockedPackage], environments: Iterable[TargetEnvironment], where: str
) -> dict[str, dict[str, Artifact]]:
    selection: dict[str, dict[str, Artifact]] = {}
    for env in environments:
        tags = env_tags(env)
        menv = marker_env(env)
        chosen: dict[str, Artifact] = {}
        for pkg in packages:
            if pkg.marker:
                try:
                    if not Marker(pkg.marker).evaluate(menv):
                        continue
                except InvalidMarker:
                    raise LockError(f"{where}: {pkg.name}: invalid marker {pkg.marker!r}") from None
            best = _best_artifact(pkg, tags)
            if best is None:
                raise LockError(
                    f"{where}: {pkg.name} {pkg.version} has no artifact for environment {env.name}",
                    hint="re-lock with 'chiron lock' after adding the platform, or allow sdists",
                )
            pkg.environments.add(env.name)
            chosen[pkg.name] = best
        selection[env.name] = chosen
    return selection


def _best_artifact(pkg: LockedPackage, tags: set[Tag]) -> Artifact | None:
    sdist: Artifact | None = None
    for art in sorted(pkg.artifacts.values(), key=lambda a: a.filename):
        if art.is_wheel:
            try:
                _n, _v, _b, wtags = parse_wheel_filename(art.filename)
            except InvalidWheelFilename:
                raise LockError(f"{pkg.name}: {art.filename} is not a valid wheel file name") from None
            if wtags & tags:
                return art
        else:
            try:
                parse_sdist_filename(art.filename)
            except InvalidSdistFilename:
                raise LockError(f"{pkg.name}: {art.filename} is neither a wheel nor an sdist") from None
            sdist = art
    return sdist


def check_fits(lock: Lock, spec: ApplianceSpec, where: str) -> None:
    """Refuse a stale lock: every top-level requirement must be locked, at an admitted version, in
    every environment its marker selects."""
    from packaging.requirements import Requirement

    for env in spec.environments:
        versions = {name: _version_of(lock, name, art) for name, art in lock.selection.get(env.name, {}).items()}
        for text in _for_env(spec.python.requirements, env):
            req = Requirement(text)
            name = canonicalize_name(req.name)
            got = versions.get(name)
            if got is None or (req.specifier and not req.specifier.contains(got, prereleases=True)):
                raise LockError(
                    f"{where}: does not satisfy python.requirements '{text}' for environment {env.name} "
                    f"(locked: {got or 'nothing'})",
                    hint="the lock is stale: run 'chiron lock SPEC' (or 'make lock') and review the change",
                )


def requirements_txt(lock: Lock, env: str) -> bytes:
    """A pip requirements file for one environment: exact pins with ``--hash``."""
    lines = [f"# chiron lock for environment {env}; install with --no-index --require-hashes"]
    for name, art in sorted(lock.selection[env].items()):
        lines.append(f"{name}=={_version_of(lock, name, art)} \\\n    --hash=sha256:{art.sha256}")
    return ("\n".join(lines) + "\n").encode()
