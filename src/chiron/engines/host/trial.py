"""The trial after the switch (Mender's model; docs/host.md, "Trial, commit and revert").

A release whose spec activates it (``post_switch``, ``compose``, ``live_check``), or one upgraded with
``--trial-until``, is on trial from just before the switch: ``trial.json`` says so (phase
``on-trial``). chiron then runs its ``post_switch`` hook, brings its Compose project up and runs the
live check. When all pass, the release is committed (or, with ``--trial-until``, waits for
``chiron commit``). When any fails, or times out, chiron reverts by itself: ``current`` back to the
previous release, the failed release's ``on_revert`` hook, the previous Compose project up again.

A revert changes which release runs, never what the host trusts: the trusted metadata and the time
floor were committed at the switch and stay. A trial whose chiron was killed, or whose host
restarted, is reverted by the next locked chiron operation (every one starts with ``recover``).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from chiron.core.compose import project_name
from chiron.core.hoststate import (
    MAX_CHECK_OUTPUT,
    HostState,
    ReleaseRecord,
    Trial,
    format_time,
    parse_time,
    read_model,
)
from chiron.core.models import HostSection
from chiron.engines.host import activation as _act
from chiron.engines.host.auditlog import audit
from chiron.engines.host.paths import Paths, crash_point, live_release, now, switch_link
from chiron.engines.host.state import write_model
from chiron.errors import EnvironmentProblem, UsageError

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_UNTIL = re.compile(r"^([0-9]{1,7})([smhd])$")


def boot_id() -> str:
    """This boot's id: a trial recorded under another one was interrupted by a restart."""
    try:
        return BOOT_ID.read_text().strip()[:64]
    except OSError:
        return ""


def parse_until(text: str) -> timedelta:
    """``--trial-until``: ``90s``, ``30m``, ``2h`` or ``1d``."""
    match = _UNTIL.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--trial-until: '{text}' is not a duration like 30m, 2h, 90s or 1d")
    return timedelta(seconds=int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)])


def verdict(trial: Trial, at: datetime, boot: str) -> str | None:
    """Why an open trial that another chiron run finds must be reverted, or None to leave it open.

    That run holds the lock, so a trial run by chiron itself (not ``external``) is one whose process
    died. A trial waiting for ``chiron commit`` stays open until its deadline, unless the host
    restarted (Mender: an update not committed before a restart is rolled back).
    """
    if trial.phase == "reverting":
        return trial.reason or "a revert was interrupted"
    if trial.phase != "on-trial":
        return None
    if not trial.external:
        return "the trial was interrupted (chiron was stopped, or the host restarted, before it ended)"
    if trial.boot_id and boot and trial.boot_id != boot:
        return "the host restarted during the trial, before 'chiron commit'"
    if at >= parse_time(trial.deadline):
        return f"the trial ended at {trial.deadline} without 'chiron commit'"
    return None


def read_trial(paths: Paths) -> Trial | None:
    return read_model(Trial, paths.trial)


def _project(paths: Paths, rid: str) -> str:
    rec = read_model(ReleaseRecord, paths.release(rid) / "release.json")
    if rec is None:
        raise EnvironmentProblem(f"{paths.release(rid)}/release.json: missing, so its Compose project is unknown")
    return project_name(rec.name)


# ---------------------------------------------------------------- starting and running a trial


def begin(paths: Paths, rid: str, previous: str | None, host: HostSection, until: timedelta | None) -> Trial:
    """Record the trial just before the switch: a crash from here on is reverted by the next run."""
    since = now()
    span = until or timedelta(
        seconds=sum(
            (
                host.post_switch.timeout if host.post_switch else 0,
                host.compose_timeout if host.compose else 0,
                host.live_check.deadline + host.live_check.timeout if host.live_check else 0,
            )
        )
    )
    trial = Trial(
        release=rid,
        previous=previous,
        phase="on-trial",
        since=format_time(since),
        deadline=format_time(since + span),
        external=until is not None,
        boot_id=boot_id(),
        pid=os.getpid(),
    )
    write_model(paths.trial, trial)
    return trial


def activate(paths: Paths, trial: Trial, host: HostSection) -> Trial:
    """After the switch: post_switch, Compose up, the live check. Then commit, or leave the release
    on trial for ``chiron commit`` (``external``), or revert and raise (exit 3)."""
    rid = trial.release
    env = _act.hook_env(paths, rid, trial.previous)
    try:
        if host.post_switch is not None:
            _act.run_hook("post_switch", host.post_switch, env)
        crash_point("post-switch")
        if _act.has_compose(paths, rid):
            _act.compose(paths, rid, _project(paths, rid), "up", host.compose_timeout, env)
        crash_point("compose-up")
        if host.live_check is not None:
            result = _act.live_check(host.live_check, env)
            trial = trial.model_copy(update={"last_check": result})
            write_model(paths.trial, trial)
            crash_point("live-check")
            if not result.ok:
                raise EnvironmentProblem(f"live check failed after {result.attempts} attempt(s): {result.output}")
    except EnvironmentProblem as exc:
        fail(paths, trial, exc.message)
    if trial.external:
        return trial
    return commit_trial(paths, trial, "live-check" if host.live_check else "activation")


def commit_trial(paths: Paths, trial: Trial, by: str) -> Trial:
    """End the trial: the release stays. Audited."""
    done = trial.model_copy(update={"phase": "committed", "ended": format_time(now()), "reason": None})
    write_model(paths.trial, done)
    check = trial.last_check
    audit(paths, "commit", "ok", release=trial.release, by=by, **({"check": check.output} if check else {}))
    return done


def fail(paths: Paths, trial: Trial, reason: str) -> None:
    """The trial failed: audit it, revert (when there is a previous release) and raise (exit 3)."""
    outcome = end_failed(paths, trial, reason)
    raise EnvironmentProblem(
        outcome,
        hint=f"'chiron status --prefix {paths.prefix}' shows the last live check; the audit log has the details",
    )


def end_failed(paths: Paths, trial: Trial, reason: str) -> str:
    """Audit the failure and revert; returns what happened (for the error or for ``recover``)."""
    reason = reason if len(reason) <= MAX_CHECK_OUTPUT else reason[: MAX_CHECK_OUTPUT - 3] + "..."
    extra: dict[str, Any] = {"check": trial.last_check.output} if trial.last_check else {}
    if trial.phase == "on-trial":
        audit(paths, "trial", "failed", release=trial.release, reason=reason, **extra)
    previous = trial.previous
    if previous is None or not paths.release(previous).is_dir():
        ended = {"phase": "failed", "ended": format_time(now()), "reason": reason}
        write_model(paths.trial, trial.model_copy(update=ended))
        return (
            f"release {trial.release} failed its trial and stays live: there is no previous release to revert to: "
            f"{reason}"
        )
    problem = revert(paths, trial, reason)
    tail = f"; bringing it back into service failed: {problem}" if problem else ""
    return f"release {trial.release} failed its trial and was reverted: {previous} is live again{tail}: {reason}"


def revert(paths: Paths, trial: Trial, reason: str) -> str | None:
    """``current`` back to the previous release, state.json swapped as by rollback, then the previous
    release brought back into service. Idempotent (phase ``reverting``), so a crash inside is finished
    by the next run. Returns a problem met while bringing the previous release back, if any."""
    previous = str(trial.previous)
    trial = trial.model_copy(update={"phase": "reverting", "reason": reason})
    write_model(paths.trial, trial)
    switch_link(paths.current, f"releases/{previous}")
    state = read_model(HostState, paths.state_file)
    if state is not None and state.current == trial.release and previous in state.releases:
        write_model(paths.state_file, state.model_copy(update={"current": previous, "previous": trial.release}))
    problem = bring_back(paths, left=trial.release, target=previous)
    why = reason + (f"; {problem}" if problem else "")
    done = trial.model_copy(update={"phase": "reverted", "ended": format_time(now()), "reason": why})
    write_model(paths.trial, done)
    audit(
        paths,
        "revert",
        "failed" if problem else "ok",
        from_release=trial.release,
        to_release=previous,
        reason=reason,
        **({"problem": problem} if problem else {}),
    )
    return problem


def bring_back(paths: Paths, *, left: str, target: str) -> str | None:
    """After ``current`` went back to ``target``: the ``on_revert`` hook of the release left, then
    ``target``'s Compose project up (or, when it has none, the left release's project down). Every
    step runs even if one fails; returns the problems, or None."""
    problems = []
    left_host = _act.activation_of(paths, left)
    target_host = _act.activation_of(paths, target)
    env = _act.hook_env(paths, target, left)
    try:
        if left_host is not None and left_host.on_revert is not None:
            _act.run_hook("on_revert", left_host.on_revert, env)
    except EnvironmentProblem as exc:
        problems.append(exc.message)
    try:
        if _act.has_compose(paths, target):
            timeout = (target_host or left_host or HostSection()).compose_timeout
            _act.compose(paths, target, _project(paths, target), "up", timeout, env)
        elif _act.has_compose(paths, left):
            timeout = (left_host or HostSection()).compose_timeout
            _act.compose(paths, left, _project(paths, left), "down", timeout, env)
    except EnvironmentProblem as exc:
        problems.append(exc.message)
    return "; ".join(problems) or None


# ---------------------------------------------------------------- recovery


def recover_trial(paths: Paths) -> str | None:
    """Revert a trial left open by a process that died, by a restart, or past its deadline (called
    by ``recover``, under the lock, after an interrupted transaction was settled)."""
    trial = read_trial(paths)
    if trial is None or trial.phase not in ("on-trial", "reverting"):
        return None
    if trial.phase == "on-trial" and live_release(paths) != trial.release:
        # Recorded, but the switch never happened (its transaction was undone): nothing ran.
        paths.trial.unlink(missing_ok=True)
        return None
    reason = verdict(trial, now(), boot_id())
    if reason is None:
        return None
    return end_failed(paths, trial, reason)
