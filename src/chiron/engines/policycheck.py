"""A dry run of the mirror policy: would this spec's lock, or a store's latest lock, pass ``policy.toml``?

Nothing is resolved, fetched or written: the lock on disk is checked as it is, against the policy a
refresh would use (the one given, else the one the store was refreshed with, else ``policy.toml``
beside the spec, else the defaults). Licence rules read the wheels' metadata where a local copy is at
hand (the store's artifacts, or the artifact cache); a wheel that is not is named in ``unchecked``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chiron.core.spec import LoadedSpec, load_spec
from chiron.engines import policy
from chiron.engines.mirror import Store
from chiron.errors import SpecError, UsageError
from chiron.sources import lock as _lock
from chiron.sources.cache import ArtifactCache


def check_spec(spec: Path, policy_file: Path | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """The policy check of the lock a spec names (``python.lock``)."""
    loaded = load_spec(spec)
    if loaded.lock_path is None:
        raise UsageError(
            f"{spec}: the spec names no lock file (python.lock)",
            hint="run 'chiron lock SPEC' first: a dry run checks a lock, it resolves nothing",
        )
    path = policy_file or _beside(loaded.path)
    return _report("spec", loaded.path, loaded, loaded.lock_path, path, cache_dir)


def check_store(store_dir: Path, policy_file: Path | None = None) -> dict[str, Any]:
    """The policy check of a store's latest lock, with the policy its next refresh would use."""
    store = Store(store_dir.absolute())
    state = store.state()
    if state is None:
        raise UsageError(f"{store.root}: not a mirror store (no state.json)", hint="run chiron mirror refresh first")
    latest = state.latest
    loaded = load_spec(Path(state.spec))
    path = policy_file
    if path is None and state.policy:
        path = Path(state.policy)
        if not path.is_file():
            raise SpecError(f"{path}: the policy this store was refreshed with is missing")
    if path is None:
        path = _beside(loaded.path)
    lock_file = store.root / latest.lock
    return _report("store", store.root, loaded, lock_file, path, store.artifacts)


def _beside(spec_path: Path) -> Path | None:
    beside = spec_path.absolute().parent / "policy.toml"
    return beside if beside.is_file() else None


def _report(
    kind: str, target: Path, loaded: LoadedSpec, lock_file: Path, policy_file: Path | None, artifacts: Path | None
) -> dict[str, Any]:
    lock = _lock.read_pylock(lock_file, loaded.spec)
    if policy_file is None:
        # As a refresh without a policy file: only what the spec itself asks for.
        rules = policy.LoadedPolicy(
            policy.Policy(sources=policy.SourceRules(sdists=loaded.spec.python.allow_sdists)), None, {}
        )
    else:
        rules = policy.load(policy_file)
    files: dict[str, Path] = {}
    unchecked: list[str] = []
    cache = ArtifactCache(artifacts) if artifacts is not None else None
    for art in lock.artifacts():
        local = cache.path_for(art.sha256) if cache is not None and art.sha256 else None
        if local is not None and local.is_file():
            files[art.filename] = local
        elif art.is_wheel:
            unchecked.append(art.filename)
    # A wheel with no local copy has an unknown licence, not "no licence": named in unchecked instead.
    unread = {(p.name, p.version) for p in lock.packages if not any(f in files for f in p.artifacts)}
    violations = [
        v
        for v in policy.check(rules, lock, files)
        if not (v.rule == "licenses.allow" and (v.package, v.version) in unread and v.detail == "declares no licence")
    ]
    return {
        "schema": "chiron.policy-check/1",
        "kind": kind,
        "target": str(target),
        "lock": str(lock_file),
        "policy": str(policy_file) if policy_file else None,
        "packages": len(lock.packages),
        "ok": not violations,
        "violations": [v.as_dict() for v in violations],
        "unchecked": sorted(unchecked) if rules.policy.licenses.allow else [],
    }
