"""Putting a host back in order: finishing or undoing an interrupted transaction, sweeping leftovers,
adopting the live release after a state restore (``chiron recover``), and ``rollback``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chiron.core.fs import fsync_dir
from chiron.core.hoststate import HostState, ReleaseRecord, Txn, format_time, read_model
from chiron.engines.host import release as _release
from chiron.engines.host import trial as _trial
from chiron.engines.host.auditlog import audit
from chiron.engines.host.paths import KEPT_APPLIANCE, Paths, live_release, now, remove_tree, switch_link
from chiron.engines.host.result import HostResult, result
from chiron.engines.host.state import ahead_of_clock, commit, load_state, locked, read_txn, reference_time, write_model
from chiron.engines.verify import HostTrust, verified
from chiron.errors import EnvironmentProblem, HostStateError, Refused, UsageError


def recover(paths: Paths) -> str | None:
    """Finish or undo an interrupted transaction; returns what was done (None if nothing)."""
    txn = read_txn(paths)
    if txn is None:
        sweep(paths)
        return _trial.recover_trial(paths)
    rid = txn.id
    linked = live_release(paths)
    if linked == rid:
        # The switch happened: the new release is live; only the bookkeeping is left to finish.
        commit(paths, txn)
        outcome = f"finished interrupted {txn.op} of {rid}"
    else:
        state = read_model(HostState, paths.state_file)
        if rid not in (state.releases if state else {}):
            remove_tree(paths.release(rid))
        remove_tree(paths.staging / rid)
        paths.txn.unlink(missing_ok=True)
        fsync_dir(paths.state)
        outcome = (
            f"undid interrupted {txn.op} of {rid}; the host stays on {f'releases/{linked}' if linked else 'nothing'}"
        )
    audit(paths, "recover", "ok", detail=outcome, release=rid)
    sweep(paths)
    reverted = _trial.recover_trial(paths)
    return outcome if reverted is None else f"{outcome}; {reverted}"


def sweep(paths: Paths) -> None:
    """Remove leftovers no transaction owns (release slots that were never completed, staging), so
    disk is not leaked.

    Never removed, whatever state.json says: the release ``current`` points to, the current and
    previous of state.json, and any completed release (one with its release.json) that state.json
    does not know: after a state restore that is a real release, for ``recover`` to adopt or the
    operator to remove. Without state.json nothing is known to be spare.
    """
    state = read_model(HostState, paths.state_file)
    if state is not None and paths.releases.is_dir():
        keep = {*state.releases, state.current, state.previous, live_release(paths)}
        for p in paths.releases.iterdir():
            if p.name in keep:
                continue
            if p.is_symlink() or (p.is_dir() and not (p / "release.json").exists()):
                remove_tree(p)
    if paths.staging.is_dir():
        for p in paths.staging.iterdir():
            remove_tree(p)


def unknown_releases(paths: Paths, state: HostState) -> list[str]:
    """Completed releases on disk that state.json does not list (after a state restore); the release
    of a pending transaction is not one of them."""
    if not paths.releases.is_dir():
        return []
    txn = read_txn(paths)
    known = {*state.releases, txn.id if txn else None}
    return sorted(
        p.name
        for p in paths.releases.iterdir()
        if p.name not in known and not p.is_symlink() and (p / "release.json").is_file()
    )


def recover_only(prefix: Path, state_dir: Path | None, wait: float = 0.0) -> str | None:
    """``chiron recover``: finish or undo an interrupted operation, then, if the state disagrees with
    the disk (a state directory restored from an older backup), adopt the live release."""
    paths = Paths.make(prefix, state_dir)
    with locked(paths, "recover", wait, create=False):
        outcome = recover(paths)
        state = load_state(paths, check_disk=False)
        if state is None:
            return outcome
        adopted = adopt(paths, state)
        if adopted is None:
            return outcome
        return adopted if outcome is None else f"{outcome}; {adopted}"


def adopt(paths: Paths, state: HostState) -> str | None:
    """Make state.json agree with the live release again; None when it already does.

    A release state.json knows (a rollback after the backup) is switched to in the state only. An
    unknown one is adopted only if its kept appliance verifies against this host's trusted metadata,
    exactly as an upgrade to it would; its trusted metadata, record and time floor are then committed
    as by an upgrade (through a transaction, so a crash is recovered), and the adoption is audited.
    """
    live = live_release(paths)
    if live is None or live == state.current:
        return None
    if not paths.release(live).is_dir():
        raise HostStateError(f"{paths.current}: points to releases/{live}, which does not exist (state damaged)")
    if live in state.releases:
        previous = state.current if state.current and paths.release(state.current).is_dir() else state.previous
        write_model(paths.state_file, state.model_copy(update={"current": live, "previous": previous}))
        outcome = f"adopted the live release {live} (state.json named {state.current} as current)"
        audit(paths, "recover", "ok", detail=outcome, release=live, adopted=True)
        return outcome
    release = _adopt_unknown(paths, state, live)
    ahead = ahead_of_clock(release.created_time())
    outcome = (
        f"adopted the live release {live}, verified against this host's trusted metadata (state.json did not know it)"
    )
    extra = {"signed_ahead_of_clock": release.created} if ahead else {}
    audit(paths, "recover", "ok", detail=outcome + (f"; {ahead}" if ahead else ""), release=live, adopted=True, **extra)
    return outcome + (f"; {ahead}" if ahead else "")


def _adopt_unknown(paths: Paths, state: HostState, live: str) -> ReleaseRecord:
    """Verify and commit an unknown live release; returns its record."""
    kept = paths.release(live) / KEPT_APPLIANCE
    if not kept.is_file():
        raise HostStateError(
            f"{kept}: missing, so the live release {live} cannot be verified and is not adopted",
            hint="restore the state backup taken after that release was installed",
        )
    recorded = read_model(ReleaseRecord, paths.release(live) / "release.json")
    ref, _notices = reference_time(paths)
    with verified(kept, host=HostTrust(paths.metadata, reference_time=ref)) as report:
        if not report.ok:
            audit(paths, "recover", "refused", release=live, reason=report.problems[0])
            raise Refused(
                f"cannot adopt releases/{live}: its kept appliance does not verify against this host's trusted "
                f"metadata: {report.problems[0]}",
                hint="restore a state backup taken after that release was installed",
            )
        current = state.releases.get(state.current) if state.current else None
        if current is not None and report.name != current.name:
            raise Refused(
                f"cannot adopt releases/{live}: it is appliance '{report.name}', this host runs '{current.name}'"
            )
        release = _release.record(
            report,
            recorded.environment if recorded else "",
            recorded.archive if recorded else str(kept),
            recorded.installer if recorded else "",
        )
        if recorded is not None:
            release = release.model_copy(update={"installed": recorded.installed})
        spec = _release.appliance_spec(report.verified, kept)
        remove_tree(paths.staging / live)
        _release.stage_metadata(paths, live, _release.metadata_to_keep(paths, report.trusted, False))
    txn = Txn(
        op="adopt", id=live, release=release, reference_time=format_time(ref), keep_releases=spec.host.keep_releases
    )
    write_model(paths.txn, txn)
    commit(paths, txn)
    return release


def rollback(prefix: Path, state_dir: Path | None, wait: float = 0.0) -> HostResult:
    """Switch back to the previous release (kept on disk); logged."""
    started = time.monotonic()
    paths = Paths.make(prefix, state_dir)
    with locked(paths, "rollback", wait, create=False):
        recover(paths)
        state = load_state(paths)
        if state is None or state.current is None:
            raise UsageError(f"{paths.prefix}: nothing is installed here")
        if not state.previous or not paths.release(state.previous).is_dir():
            raise Refused(f"{paths.prefix}: there is no previous release to roll back to")
        target, old = state.previous, state.current
        switch_link(paths.current, f"releases/{target}")
        write_model(paths.state_file, state.model_copy(update={"current": target, "previous": old}))
        trial = _trial.read_trial(paths)
        if trial is not None and trial.phase == "on-trial" and trial.release == old:
            ended = {"phase": "reverted", "ended": format_time(now()), "reason": "rolled back by the operator"}
            write_model(paths.trial, trial.model_copy(update=ended))
        # The application follows: the left release's on_revert hook, the target's Compose project.
        problem = _trial.bring_back(paths, left=old, target=target)
        rel = state.releases[target]
        extra = {"problem": problem} if problem else {}
        audit(paths, "rollback", "ok", from_release=old, to_release=target, to_version=rel.version, **extra)
    res = result("rollback", target, rel, old, time.monotonic() - started, [])
    if problem:
        raise EnvironmentProblem(
            f"rolled back to {target}, but bringing it into service failed: {problem}",
            hint="the release is switched; fix the cause and run the hook or 'docker compose up' by hand",
        )
    return res


def commit_release(prefix: Path, state_dir: Path | None, wait: float = 0.0) -> dict[str, Any]:
    """``chiron commit``: confirm the release on trial (``upgrade --trial-until``). A trial already
    past its deadline, or interrupted by a restart, is reverted instead (by the recovery step) and the
    commit refused."""
    paths = Paths.make(prefix, state_dir)
    with locked(paths, "commit", wait, create=False):
        recovered = recover(paths)
        state = load_state(paths)
        if state is None or state.current is None:
            raise UsageError(f"{paths.prefix}: nothing is installed here")
        trial = _trial.read_trial(paths)
        if trial is None or trial.phase != "on-trial":
            if trial is not None and trial.phase in ("reverted", "failed"):
                raise Refused(
                    f"release {trial.release} is not on trial: its trial ended {trial.ended} ({trial.phase}): "
                    f"{trial.reason}",
                    hint=f"release {state.current} is live; upgrade again to try {trial.release} once more",
                )
            raise UsageError(f"{paths.prefix}: no release is on trial (release {state.current} is committed)")
        done = _trial.commit_trial(paths, trial, "operator")
    return {
        "schema": "chiron.commit/1",
        "prefix": str(paths.prefix),
        "release": done.release,
        "previous": done.previous,
        "committed": done.ended,
        "recovered": recovered,
    }
