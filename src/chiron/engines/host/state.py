"""The host's state: loading and checking it (typed, against the digests and against what is on disk),
the lock, the time floor, and the commit that records a release after the switch."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from chiron.core import filelock as _lockfile
from chiron.core.fs import fsync_dir, write_atomic
from chiron.core.hoststate import (
    RESTORE_HINT,
    STATE_SCHEMA,
    Floor,
    HostState,
    Trial,
    Txn,
    damaged,
    dump,
    format_time,
    parse_time,
    read_model,
)
from chiron.engines.host.paths import (
    PRIVATE_DIR,
    PUBLIC_DIR,
    Paths,
    check_host_dirs,
    ensure_dir,
    live_release,
    naming,
    now,
    remove_tree,
    switch_link,
)
from chiron.engines.verify import TRUSTED_FILES
from chiron.errors import HostStateError

FUTURE_BOUND = timedelta(days=1)  # a signed time further ahead of the clock than this is reported


def write_model(path: Path, model: BaseModel, mode: int = 0o600) -> None:
    """Write a state file atomically; a full disk names the file."""
    with naming(path, "cannot write"):
        write_atomic(path, dump(model), mode=mode)


def digest(path: Path) -> str:
    with naming(path, "cannot read"):
        return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- lock


@contextlib.contextmanager
def locked(paths: Paths, op: str, wait: float, *, create: bool = True) -> Iterator[None]:
    """Hold the host's exclusive lock; wait up to ``wait`` seconds for another operation to end.

    The directories are checked for owner and mode first, and the operation runs under umask 022, so
    nothing it creates (nor what uv or pip create for it) is writable by others. Without ``create``, a
    host with no state directory is left untouched (the caller then finds nothing installed).
    """
    check_host_dirs(paths)
    old_umask = os.umask(0o022)
    try:
        if not create and not paths.state.is_dir():
            yield
            return
        ensure_dir(paths.prefix, PUBLIC_DIR, follow=True)
        ensure_dir(paths.state, PRIVATE_DIR, follow=True)
        lock = paths.state / "lock"
        if os.path.lexists(lock) and (lock.is_symlink() or not lock.is_file()):
            raise damaged(lock, "is not a regular file")
        with contextlib.ExitStack() as stack:
            with naming(paths.state / "lock", "cannot take the lock"):
                stack.enter_context(_lockfile.hold(paths.state / "lock", op, wait))
            yield
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------- loading and checking


def read_txn(paths: Paths) -> Txn | None:
    return read_model(Txn, paths.txn)


def load_state(paths: Paths, *, check_disk: bool = True) -> HostState | None:
    """The host's state, checked; None on a fresh prefix.

    Refused (HostStateError, exit 4): a damaged file; a prefix with releases but no state; metadata
    that does not match the recorded digests (silently re-trusting would re-open rollback attacks);
    and, with ``check_disk``, a ``current`` link that disagrees with state.json (a state directory
    restored from an older backup: ``chiron recover`` adopts the live release).
    """
    state = read_model(HostState, paths.state_file)
    txn = read_txn(paths)  # every state file is read through its model: damage is refused here
    read_floor(paths)
    read_model(Trial, paths.trial)
    if state is None:
        if txn is not None:
            return None  # an interrupted first install: the next operation's recovery settles it
        has_releases = paths.releases.is_dir() and any(paths.releases.iterdir())
        if has_releases or paths.current.is_symlink():
            raise HostStateError(
                f"{paths.state_file}: missing, but {paths.prefix} holds installed releases (state lost or moved)",
                hint="restore the state directory from backup, or pass --state-dir "
                "(docs/runbooks/install-and-upgrade.md section 7)",
            )
        if paths.metadata.is_dir() and any(paths.metadata.iterdir()):
            raise HostStateError(f"{paths.state}: trusted metadata present but state.json missing (state damaged)")
        return None
    recorded = {str(k): v for k, v in state.metadata_digests.items()}
    for name in TRUSTED_FILES:
        path = paths.metadata / name
        if path.is_symlink():
            raise damaged(path, "is a symlink (trusted metadata is kept as files in the state directory)")
        if not path.is_file():
            raise HostStateError(f"{path}: trusted metadata is missing (state damaged or tampered)", hint=RESTORE_HINT)
        if recorded.get(name) != digest(path):
            raise HostStateError(
                f"{path}: trusted metadata differs from the digest recorded in state.json (tampered)",
                hint="restore the state directory from backup; do not re-install over it",
            )
    if check_disk:
        check_agreement(paths, state)
    return state


def check_agreement(paths: Paths, state: HostState) -> None:
    """``current`` must point to the release state.json calls current (or, while a transaction is
    pending, to the one it installs), and that release must exist."""
    live = live_release(paths)
    txn = read_txn(paths)
    trial = read_model(Trial, paths.trial)
    expected = {state.current} | ({txn.id} if txn else set())
    if trial is not None and trial.phase == "reverting":
        expected.add(trial.previous)  # a revert interrupted between the switch back and state.json
    if live in expected:
        if live is not None and not paths.release(live).is_dir():
            raise damaged(paths.current, f"points to releases/{live}, which does not exist")
        return
    adopt = (
        f"run 'chiron recover --prefix {paths.prefix}' to adopt the live release "
        "(docs/runbooks/install-and-upgrade.md section 7)"
    )
    if live is None:
        raise HostStateError(
            f"{paths.current}: missing, but {paths.state_file} says release {state.current} is current (state damaged)",
            hint=RESTORE_HINT,
        )
    knows = (
        f"says the current release is {state.current}"
        if live in state.releases
        else f"does not know that release (it says {state.current})"
    )
    raise HostStateError(
        f"{paths.current} points to releases/{live}, but {paths.state_file} {knows}: "
        "the state disagrees with the disk (restored from an older backup?)",
        hint=adopt,
    )


# ---------------------------------------------------------------- time floor


def read_floor(paths: Paths) -> datetime | None:
    floor = read_model(Floor, paths.floor)
    return None if floor is None else parse_time(floor.floor)


def reference_time(paths: Paths) -> tuple[datetime, list[str]]:
    """max(now, floor): a clock set back cannot make expired metadata valid again."""
    current = now()
    floor = read_floor(paths)
    if floor is not None and floor > current:
        return floor, [
            f"this host's clock ({format_time(current)}) is behind the time floor {format_time(floor)}; "
            "the floor is used"
        ]
    return current, []


def raise_floor(paths: Paths, *times: datetime) -> None:
    current = read_floor(paths)
    new = max([t for t in (current, *times) if t is not None])
    if current is None or new > current:
        write_model(paths.floor, Floor(floor=format_time(new)))


def ahead_of_clock(signed: datetime | None) -> str | None:
    """A notice when a signed time is further ahead of this host's clock than FUTURE_BOUND: it moves
    the time floor, so a mirror whose clock runs ahead would move every host's floor."""
    current = now()
    if signed is None or signed - current <= FUTURE_BOUND:
        return None
    return (
        f"the appliance was signed at {format_time(signed)}, {signed - current} ahead of this host's clock "
        f"({format_time(current)}): the time floor moves to it; check this host's clock and the mirror's"
    )


# ---------------------------------------------------------------- commit


def commit(paths: Paths, txn: Txn) -> None:
    """After the switch: install the staged trusted metadata, record state, drop old releases.

    Idempotent, so recovery can run it again after a crash at any point inside it. The release that
    ``current`` points to and the previous one are never deleted, whatever state.json says.
    """
    ensure_dir(paths.bin, PUBLIC_DIR)
    if not (paths.bin / "chiron").is_symlink():
        switch_link(paths.bin / "chiron", "../current/bin/chiron")
    staged = paths.staging / txn.id / "metadata"
    ensure_dir(paths.metadata, PRIVATE_DIR)
    digests = {}
    for name in TRUSTED_FILES:
        src = staged / name
        if src.is_file():
            with naming(paths.metadata / name, "cannot write"):
                write_atomic(paths.metadata / name, src.read_bytes())
        digests[name] = digest(paths.metadata / name)
    fsync_dir(paths.metadata)
    state = read_model(HostState, paths.state_file) or HostState.empty()
    releases = {**state.releases, txn.id: txn.release}
    previous = state.current if state.current != txn.id else state.previous
    # After a state restore the backup's current release may be gone from disk: never name it previous.
    if previous is not None and (previous not in releases or not paths.release(previous).is_dir()):
        previous = None
    keep = {txn.id, previous, live_release(paths)}
    for rid in sorted(releases, key=lambda r: releases[r].installed):  # oldest first
        if rid not in keep and len(releases) > txn.keep_releases:
            remove_tree(paths.release(rid))
            del releases[rid]
    new = HostState(
        schema_=STATE_SCHEMA,
        current=txn.id,
        previous=previous,
        releases=releases,
        metadata_digests=digests,  # type: ignore[arg-type]
    )
    write_model(paths.state_file, new)
    created = txn.release.created_time()
    raise_floor(paths, parse_time(txn.reference_time), *([created] if created else []))
    remove_tree(paths.staging / txn.id)
    paths.txn.unlink(missing_ok=True)
    fsync_dir(paths.state)
