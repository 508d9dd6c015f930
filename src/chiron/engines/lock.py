"""``chiron lock``: resolve a spec for every environment, measure every artifact's hash through the
cache, and write pylock.toml plus one hash-pinned requirements file per environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chiron.core.fs import write_atomic
from chiron.core.spec import load_spec
from chiron.errors import UsageError
from chiron.sources import lock as _lock
from chiron.sources.cache import ArtifactCache, default_cache_dir


@dataclass(frozen=True)
class LockResult:
    written: list[Path]
    packages: int
    environments: int


def lock(spec: Path, output: Path | None = None, cache_dir: Path | None = None) -> LockResult:
    """Resolve ``spec`` and write its lock files (to ``output`` or the spec's ``python.lock``)."""
    loaded = load_spec(spec)
    out = output or loaded.lock_path
    if out is None:
        raise UsageError(f"{spec}: python.lock is not set; pass --output PATH")
    result = _lock.resolve(loaded.spec, loaded.base)
    cache = ArtifactCache(cache_dir or default_cache_dir())
    measured = {}
    for art in result.artifacts():
        _p, sha, size = cache.fetch(art.url, art.sha256, art.filename)
        measured[art.filename] = (sha, size)
    _lock.fill_hashes(result, measured)
    write_atomic(out, _lock.write_pylock(result, loaded.spec))
    written = [out]
    for env in loaded.spec.environments:
        req = out.with_name(f"requirements-{env.name}.txt")
        write_atomic(req, _lock.requirements_txt(result, env.name))
        written.append(req)
    return LockResult(written, len(result.packages), len(loaded.spec.environments))
