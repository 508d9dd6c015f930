"""The lock files: PEP 751 ``pylock.toml`` (the record) read and written, and one pip requirements file
with ``--hash`` per environment (what an installer on the host consumes)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.markers import InvalidMarker, Marker
from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from chiron.core.fs import read_small
from chiron.core.models import ApplianceSpec, TargetEnvironment
from chiron.errors import LockError, UsageError
from chiron.sources.lock.model import SHA256, Artifact, Lock, LockedPackage
from chiron.sources.lock.tags import env_tags, marker_env, requirements_for


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


MAX_LOCK = 64 << 20  # thousands of packages with many wheels each stay far below this


def read_pylock(path: Path, spec: ApplianceSpec) -> Lock:
    """Read a PEP 751 lock (ours or another tool's) and choose each environment's artifact by tags."""
    if not path.exists() and not path.is_symlink():
        raise LockError(f"{path}: lock file not found", hint="run 'chiron lock SPEC' to create it")
    try:
        text = read_small(path, MAX_LOCK, "lock file").decode("utf-8")
    except UsageError as exc:
        raise LockError(exc.message) from None
    except UnicodeDecodeError:
        raise LockError(f"{path}: lock file is not UTF-8 text") from None
    return parse_pylock(text, spec.environments, allow_sdists=spec.python.allow_sdists, where=str(path))


def parse_pylock(text: str, environments: Iterable[TargetEnvironment], *, allow_sdists: bool, where: str) -> Lock:
    """Parse lock text and select, for every environment, the artifact of each package it installs."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise LockError(f"{where}: not a valid TOML lock: {reason}") from None
    if str(data.get("lock-version", "")).split(".")[0] != "1":
        raise LockError(f"{where}: lock-version {data.get('lock-version')!r} is not a PEP 751 1.x lock")
    entries = data.get("packages", [])
    if not isinstance(entries, list):
        raise LockError(f"{where}: packages: is not an array of tables")
    packages = [_read_package(entry, f"{where}: packages[{i}]", allow_sdists) for i, entry in enumerate(entries)]
    selection = _select(packages, environments, where)
    return Lock(packages=packages, selection=selection)


def _text(table: dict[str, Any], key: str, at: str, *, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise LockError(f"{at}: {key}: {'missing' if value is None else 'is not a string'}")
    return value


def _read_package(entry: object, at: str, allow_sdists: bool) -> LockedPackage:
    """One [[packages]] table, every field checked for its type (a lock is input: it may be hostile)."""
    if not isinstance(entry, dict):
        raise LockError(f"{at}: is not a table")
    name, version = canonicalize_name(str(_text(entry, "name", at))), str(_text(entry, "version", at))
    pkg = LockedPackage(
        name, version, _text(entry, "index", at, required=False), marker=_text(entry, "marker", at, required=False)
    )
    items = entry.get("wheels", [])
    if not isinstance(items, list):
        raise LockError(f"{at}: wheels: is not an array of tables")
    items = list(items)
    if "sdist" in entry:
        if not allow_sdists:
            raise LockError(f"{at} ({name} {version}): is an sdist and python.allow_sdists is false")
        items.append(entry["sdist"])
    for j, w in enumerate(items):
        art = _read_artifact(w, f"{at}.wheels[{j}]")
        pkg.artifacts[art.filename] = art
    if not pkg.artifacts:
        raise LockError(f"{at} ({name} {version}): has no wheels (chiron installs from artifacts only)")
    return pkg


def _read_artifact(w: object, where: str) -> Artifact:
    if not isinstance(w, dict):
        raise LockError(f"{where}: is not a table")
    url = _text(w, "url", where) or ""
    name = _text(w, "name", where, required=False) or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    hashes = w.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not name or not url:
        raise LockError(f"{where}: needs name and url")
    if not isinstance(sha, str) or not SHA256.match(sha):
        raise LockError(f"{where} ({name}): needs hashes.sha256 (64 hex digits)")
    size = w.get("size")
    if size is not None and (type(size) is not int or size < 0):
        raise LockError(f"{where} ({name}): size: is not a non-negative integer")
    return Artifact(filename=name, url=url, sha256=sha, size=size)


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
        for text in requirements_for(spec.python.requirements, env):
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
