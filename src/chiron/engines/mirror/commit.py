"""The end of a refresh: the result when nothing changed, or the commit of version N+1 (lock, TUF
state, changelog, delta, then ``state.json`` last: the commit point), and the store's claim beside
its root chain directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from chiron.archive import delta
from chiron.archive.reader import ArchiveReader
from chiron.core.fs import sha256_file, write_atomic
from chiron.core.spec import LoadedSpec
from chiron.core.storestate import ResolvedFrom, StoreState, VersionRecord, write_claim
from chiron.engines import diff, policy
from chiron.engines.build import BuildResult, root_dir_of
from chiron.sources.cache import FetchStats
from chiron.trust import metadata as _trust

from .model import RefreshResult, Run
from .store import Store, root_info, save_tuf


def key_uris(loaded: LoadedSpec) -> dict[str, list[str]]:
    """Which keys sign each role, by URI as the spec gives them (never key material)."""
    return {role: [k.uri for k in r.keys] for role, r in loaded.spec.trust.roles.items()}


def unchanged(run: Run, latest: VersionRecord, stats: FetchStats, new_blobs: dict[str, int]) -> RefreshResult:
    """Nothing new upstream: version N stays the newest; with --delta-from, the delta to it."""
    result = RefreshResult(
        store=run.store.root,
        changed=False,
        name=run.loaded.spec.appliance.name,
        version=latest.version,
        metadata_version=latest.metadata_version,
        appliance=run.store.root / latest.file,
        downloaded=stats.downloaded,
        bytes_downloaded=stats.bytes_downloaded,
        reused=stats.reused,
        image_blobs_fetched=len(new_blobs),
        image_bytes_fetched=sum(new_blobs.values()),
        seconds=time.monotonic() - run.started,
        notes=[f"nothing changed upstream: version {latest.metadata_version} stays the newest", *run.notes],
        warnings=run.warnings,
        root=root_info(run.chain),
    )
    if run.opts.delta_from is not None and result.appliance and result.appliance.is_file():
        # Nothing new to sign, but the operator still needs a delta to the newest version.
        made = delta.make(run.opts.delta_from, result.appliance, result.appliance.with_suffix(".delta"))
        result.delta, result.delta_size = made.path, made.size
    return result


def commit(
    run: Run,
    built: BuildResult,
    number: int,
    key: str,
    pages: ResolvedFrom | None,
    stats: FetchStats,
    new_blobs: dict[str, int],
) -> RefreshResult:
    """Record version N+1: its lock and TUF state, the changelog and delta, then state.json."""
    store, out, chain = run.store, built.output, run.chain
    os.replace(store.locks / ".pending.pylock.toml", store.locks / f"{number}.pylock.toml")
    save_tuf(store, out, chain)
    result = RefreshResult(
        store=store.root,
        changed=True,
        name=built.name,
        version=built.version,
        metadata_version=number,
        appliance=out,
        size=built.size,
        downloaded=stats.downloaded,
        bytes_downloaded=stats.bytes_downloaded,
        reused=stats.reused,
        image_blobs_fetched=len(new_blobs),
        image_bytes_fetched=sum(new_blobs.values()),
        seconds=0.0,
        notes=[*run.notes, *built.notes],
        warnings=run.warnings,
        root=root_info(chain),
    )
    latest = run.latest
    previous = store.root / latest.file if latest else None
    if previous is not None and previous.is_file():
        result.changelog = diff.diff(previous, out)
    if run.opts.delta_from is not None:
        made = delta.make(run.opts.delta_from, out, out.with_suffix(".delta"))
        result.delta, result.delta_size = made.path, made.size
    # The policy verdict beside the lock (before state.json, the commit point): what chiron report shows.
    verdict = policy.verdict(run.rules, run.accepted, sha256_file(out))
    write_atomic(store.locks / f"{number}.policy.json", json.dumps(verdict, indent=2, sort_keys=True).encode() + b"\n")
    keep_root = run.state is not None and run.state.root is not None and run.opts.spec is None
    store.write_state(_next_state(run, built, number, key, pages, stats, keep_root))
    note = claim(store, run.loaded, chain, number) if not keep_root else None
    result.notes += [note] if note else []
    result.seconds = time.monotonic() - run.started
    return result


def _next_state(
    run: Run, built: BuildResult, number: int, key: str, pages: ResolvedFrom | None, stats: FetchStats, keep_root: bool
) -> StoreState:
    """The state with version N+1 appended (written last: the commit point)."""
    store, out, state = run.store, built.output, run.state
    entry = VersionRecord(
        metadata_version=number,
        version=built.version,
        created=_created(out),
        file=str(out.relative_to(store.root)),
        sha256=sha256_file(out),
        size=built.size,
        content_key=key,
        lock=f"locks/{number}.pylock.toml",
        downloaded=stats.downloaded,
        bytes_downloaded=stats.bytes_downloaded,
        resolved_from=pages,
        root_version=_trust.parse_root(run.chain[-1], "root").signed.version,
    )
    return StoreState(
        format="chiron-mirror/1",
        name=built.name,
        spec=str(run.spec_path.absolute()),
        base=str(run.base.absolute()) if run.base else None,
        files_dir=str(run.files_dir) if run.files_dir else None,
        # Only a policy given with --policy is remembered; policy.toml beside the spec is found anew.
        policy=str(run.opts.policy.absolute()) if run.opts.policy else (state.policy if state else None),
        root=state.root if keep_root and state else None,
        keys=key_uris(run.loaded),
        versions=[*(state.versions if state else []), entry],
    )


def claim(store: Store, loaded: LoadedSpec, chain: list[bytes], number: int) -> str | None:
    """Record the store beside the spec's root chain directory (if trust.root names one), so that
    chiron build with that root refuses to fork the store's version sequence."""
    root_dir = root_dir_of(loaded)
    if root_dir is None:
        return None
    return write_claim(root_dir, store.root, loaded.spec.appliance.name, _trust.fingerprint(chain[0]), number)


def _created(archive: Path) -> str:
    with ArchiveReader(archive) as reader:
        return str(json.loads(reader.read("appliance.json", 1 << 20))["created"])
