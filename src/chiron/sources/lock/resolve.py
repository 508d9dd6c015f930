"""Resolution: real pip (``pip install --dry-run --report``) once per target environment, with that
environment's Python version, implementation, ABIs and platform tags; pip's choices, with their sha256,
become the lock.

pip runs in a private, empty working directory (a folder in the caller's working directory must not
be taken for a requirement). When pip finds no distribution, the index is asked directly before the
spec is blamed: an index that cannot be reached is a network problem (exit 3, naming the URL), not a
spec to change."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.utils import (
    canonicalize_name,
)

from chiron.core import proc as _proc
from chiron.core.models import ApplianceSpec, PythonSection, TargetEnvironment
from chiron.errors import ArtifactError, ChironError, EnvironmentProblem, LockError, UsageError
from chiron.sources.http import probe
from chiron.sources.lock.model import Artifact, Lock, LockedPackage
from chiron.sources.lock.tags import env_platforms, requirements_for


def resolve(spec: ApplianceSpec, spec_dir: Path) -> Lock:
    """Resolve the spec's requirements once per environment with real pip; return the lock."""
    py = spec.python
    if not py.requirements:
        raise UsageError("the spec has no python.requirements to resolve (it uses a lock)")
    pip = _proc.find_program("pip", module="pip")
    packages: dict[tuple[str, str], LockedPackage] = {}
    selection: dict[str, dict[str, Artifact]] = {}
    with tempfile.TemporaryDirectory(prefix="chiron-resolve-") as tmp:
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        for env in spec.environments:
            # pip evaluates requirement markers against the interpreter it runs on, not the target:
            # evaluate top-level markers for the target environment here and pass plain requirements.
            reqs = Path(tmp) / f"requirements-{env.name}.in"
            reqs.write_text("\n".join(requirements_for(py.requirements, env)) + "\n")
            report_path = Path(tmp) / f"report-{env.name}.json"
            args = [*_pip_args(py, env, spec_dir), "--report", str(report_path), "-r", str(reqs)]
            try:
                _proc.run(pip, args, cwd=cwd, timeout=1800, what=f"resolving for environment {env.name}")
            except EnvironmentProblem as exc:
                if "No matching distribution" in exc.message or "Could not find a version" in exc.message:
                    raise _no_distribution(exc.message, env.name, py.index_url) from None
                raise
            report = json.loads(report_path.read_text())
            selection[env.name] = _from_report(report, env, packages, py.allow_sdists, py.index_url)
    return Lock(packages=sorted(packages.values(), key=lambda p: (p.name, p.version)), selection=selection)


def _pip_args(py: PythonSection, env: TargetEnvironment, spec_dir: Path) -> list[str]:
    """pip's options for one environment: its tags (or the running interpreter's, for sdists), the
    index and the find-links."""
    args = ["--isolated", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-input"]
    if py.allow_sdists:
        # pip cannot pick sdists for a foreign platform: only the running interpreter's own.
        host_version = f"{sys.version_info.major}.{sys.version_info.minor}"
        if env.python_version != host_version:
            raise UsageError(
                f"environment {env.name}: python.allow_sdists needs a resolver running Python "
                f"{env.python_version} (this is {host_version})",
                hint="run chiron lock under that interpreter, or disallow sdists",
            )
        args += ["--prefer-binary"]
    else:
        args += ["--only-binary=:all:", "--python-version", env.python_version, "--implementation", env.implementation]
        for plat in env_platforms(env):
            args += ["--platform", plat]
        for abi in env.abi_list():
            args += ["--abi", abi]
    args += ["--index-url", py.index_url] if py.index_url else ["--no-index"]
    for link in py.find_links:
        args += ["--find-links", _link(link, spec_dir)]
    return args


_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)")


def _no_distribution(message: str, env: str, index_url: str | None) -> ChironError:
    """pip found nothing: a spec problem only if the index answered. An unreachable index (pip says
    "from versions: none" after its retries, exactly as for a missing wheel) is a network failure."""
    m = _NOT_FOUND.search(message)
    if index_url and m:
        url = f"{index_url.rstrip('/')}/{canonicalize_name(m.group(1))}/"
        status, reason = probe(url)
        if status is None or status >= 500:
            return ArtifactError(
                f"environment {env}: cannot reach the package index at {url}: {reason or f'HTTP {status}'}",
                hint="check the index URL and that the host is reachable; nothing was changed, run again later",
            )
        if status == 404:
            return LockError(
                f"environment {env}: the index {index_url} has no project '{m.group(1)}' ({url} answered 404)",
                hint="check the requirement's name in python.requirements",
            )
    return LockError(
        f"environment {env}: {message.split(': ', 1)[-1]}",
        hint="no wheel fits this environment's tags; pin another version, add its platform, "
        "or set python.allow_sdists = true",
    )


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
