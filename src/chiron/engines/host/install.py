"""``install`` and ``upgrade``: lock, recover, verify everything, build the new release beside the old,
health-check it, switch ``current`` (the commit point) and record it."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from chiron.archive import delta
from chiron.archive.reader import open_regular
from chiron.core import telemetry as _telemetry
from chiron.core.fs import fsync_dir
from chiron.core.hoststate import HostState, ReleaseRecord, Txn, format_time
from chiron.core.models import HostSection, TargetEnvironment
from chiron.engines.host import activation as _activation
from chiron.engines.host import release as _release
from chiron.engines.host import trial as _trial
from chiron.engines.host.auditlog import audit
from chiron.engines.host.health import health_check
from chiron.engines.host.identity import identity_at_install
from chiron.engines.host.images import load_images
from chiron.engines.host.paths import (
    KEPT_APPLIANCE,
    PRIVATE_DIR,
    Paths,
    crash_point,
    ensure_dir,
    remove_tree,
    switch_link,
)
from chiron.engines.host.recovery import recover
from chiron.engines.host.result import HostResult, result
from chiron.engines.host.state import ahead_of_clock, commit, load_state, locked, reference_time, write_model
from chiron.engines.verify import HostTrust, VerifyReport, verified
from chiron.errors import ChironError, Refused, UsageError, VerificationError
from chiron.sources import lock as _lock
from chiron.trust.anchor import anchor_from_options


@dataclass(frozen=True)
class InstallOptions:
    archive: Path
    prefix: Path
    state_dir: Path | None = None
    root_file: Path | None = None
    root_sha256: str | None = None
    trust_on_first_use: bool = False  # install without an anchor: only when asked for explicitly
    allow_downgrade: bool = False
    installer: str = "auto"
    images: str = "load"  # load into the Docker Engine, push into ``registry``, or skip
    registry: str | None = None  # for images = "push": the enclave registry (host[:port])
    wait: float = 0.0
    show_progress: bool = False
    delta: Path | None = None  # the delta ``archive`` was rebuilt from (what the operator gave)
    trial_until: timedelta | None = None  # upgrade --trial-until: on trial until ``chiron commit``


def _given(opts: InstallOptions) -> str:
    """The file the operator named: the delta when the archive was rebuilt from one."""
    return str(opts.delta or opts.archive)


def _check_inputs(opts: InstallOptions) -> None:
    """Before the lock and before anything is created: the archive (and root file) must be regular
    files. A FIFO would block for ever while holding the lock; a missing file is a usage error."""
    for path in (opts.archive, opts.root_file):
        if path is not None:
            os.close(open_regular(path))


def install(opts: InstallOptions) -> HostResult:
    """First installation on a host: verify against an anchor, then create the first release."""
    paths = Paths.make(opts.prefix, opts.state_dir)
    _check_inputs(opts)  # a missing or unreadable archive is named first
    anchor = anchor_from_options(
        opts.root_file, opts.root_sha256, trust_on_first_use=opts.trust_on_first_use, required=True
    )
    with locked(paths, "install", opts.wait):
        recover(paths)
        state = load_state(paths)
        if state is not None and state.current is not None:
            raise Refused(
                f"{paths.prefix}: already has release {state.current} installed",
                hint=f"use 'chiron upgrade {opts.archive} --prefix {paths.prefix}'",
            )
        ref, notices = reference_time(paths)
        with verified(
            opts.archive,
            anchor=anchor,
            show_progress=opts.show_progress,
            reference_time=ref,
        ) as report:
            notices += report.notices
            res = _apply(paths, opts, "install", report, None, ref, notices)
        res.notices += identity_at_install(paths.state)  # under the lock: one identity, however many installs race
        return res


def upgrade(opts: InstallOptions) -> HostResult:
    """Verify a newer archive against the host's trusted metadata, install it beside the old, switch."""
    paths = Paths.make(opts.prefix, opts.state_dir)
    if opts.root_file or opts.root_sha256:
        raise UsageError("upgrade verifies against the host's trusted metadata; --root/--root-sha256 are for install")
    _check_inputs(opts)
    with locked(paths, "upgrade", opts.wait, create=False):
        recover(paths)
        state = load_state(paths)
        if state is None or state.current is None:
            raise UsageError(
                f"{paths.prefix}: nothing is installed here",
                hint=f"install first: chiron install {opts.archive} --prefix {paths.prefix} --root-sha256 HEX",
            )
        open_trial = _trial.read_trial(paths)
        if open_trial is not None and open_trial.phase == "on-trial":
            raise Refused(
                f"release {open_trial.release} is on trial until {open_trial.deadline}",
                hint=f"confirm it first (chiron commit --prefix {paths.prefix}) or roll back (chiron rollback)",
            )
        if delta.is_delta(opts.archive):
            return _upgrade_delta(paths, opts, state)
        return _upgrade(paths, opts, state)


def _upgrade_delta(paths: Paths, opts: InstallOptions, state: HostState) -> HostResult:
    """Rebuild the full appliance from the delta and the appliances kept with the releases; from here
    on it is upgraded like any full appliance (verified completely first)."""
    work = ensure_dir(ensure_dir(paths.staging, PRIVATE_DIR) / "delta", PRIVATE_DIR)
    rebuilt = work / (opts.archive.name.removesuffix(".delta") + ".pex")
    sources = [p / KEPT_APPLIANCE for p in sorted(paths.releases.iterdir()) if (p / KEPT_APPLIANCE).is_file()]
    try:
        delta.apply(opts.archive, sources, rebuilt)
    except BaseException as exc:
        remove_tree(work)  # nothing of a delta that cannot be applied stays behind
        if isinstance(exc, ChironError):
            outcome = "refused" if isinstance(exc, Refused) else "failed"
            audit(paths, "upgrade", outcome, archive=_given(opts), reason=exc.diagnostics())
        raise
    try:
        return _upgrade(paths, dataclasses.replace(opts, archive=rebuilt, delta=opts.archive), state)
    finally:
        remove_tree(work)  # the new release keeps its own copy of the rebuilt appliance


def _upgrade(paths: Paths, opts: InstallOptions, state: HostState) -> HostResult:
    """Upgrade to a full appliance (under the lock, after recovery, with a release installed)."""
    ref, notices = reference_time(paths)
    trust = HostTrust(paths.metadata, reference_time=ref, allow_rollback=opts.allow_downgrade)
    with verified(opts.archive, host=trust, show_progress=opts.show_progress) as report:
        notices += report.notices
        if state.current is None:
            raise UsageError(f"{paths.prefix}: nothing is installed here")
        current = state.releases[state.current]
        if report.ok and report.trusted and _release.targets_sha256(report) == current.targets_sha256:
            # Already the live release (e.g. an upgrade re-run after it had switched): nothing to do.
            audit(paths, "upgrade", "noop", archive=_given(opts), release=state.current)
            res = result("upgrade", state.current, current, state.previous, 0.0, notices)
            res.changed = False
            return res
        if report.ok:
            _check_version(paths, opts, report, current)
        elif report.rollback:
            audit(paths, "upgrade", "refused", archive=_given(opts), reason=report.problems[0])
            raise Refused(report.problems[0], hint="pass --allow-downgrade to install an older release deliberately")
        return _apply(paths, opts, "upgrade", report, state, ref, notices)


def _check_version(paths: Paths, opts: InstallOptions, report: VerifyReport, current: ReleaseRecord) -> None:
    from packaging.version import Version

    if report.name != current.name:
        audit(paths, "upgrade", "refused", archive=_given(opts), reason="different appliance")
        raise Refused(f"{opts.archive} is appliance '{report.name}', this host runs '{current.name}'")
    if Version(str(report.version)) < Version(current.version) and not opts.allow_downgrade:
        audit(
            paths,
            "upgrade",
            "refused",
            archive=_given(opts),
            reason="downgrade",
            from_version=current.version,
            to_version=report.version,
        )
        raise Refused(
            f"{opts.archive} is version {report.version}, older than the installed {current.version}",
            hint="pass --allow-downgrade to install it deliberately (the operation is logged)",
        )


def _apply(
    paths: Paths,
    opts: InstallOptions,
    op: str,
    report: VerifyReport,
    state: HostState | None,
    ref: datetime,
    notices: list[str],
) -> HostResult:
    started = time.monotonic()
    if not report.ok:
        audit(paths, op, "failed", archive=_given(opts), reason=report.problems[0])
        raise VerificationError(report.problems, hint="; ".join(notices) or None)
    crash_point("verified")
    previous = state.current if state else None
    rid = _release.release_id(paths, report)
    with _telemetry.span(f"chiron.{op}", release=rid, version=str(report.version)):
        try:
            txn, hostspec = _prepare(paths, opts, op, report, rid, ref, notices, previous)
        except BaseException as exc:
            # Nothing outside the new slot and staging was touched: remove them and stay where we are.
            _release.discard(paths, rid)
            paths.txn.unlink(missing_ok=True)
            reason = exc.diagnostics() if isinstance(exc, ChironError) else f"{type(exc).__name__}: {exc}"
            audit(paths, op, "failed", archive=_given(opts), release=rid, reason=reason, stays_on=previous)
            raise
        ahead = ahead_of_clock(txn.release.created_time())
        if ahead:
            notices.append(ahead)
        on_trial = hostspec.activates or opts.trial_until is not None
        trial = _trial.begin(paths, rid, previous, hostspec, opts.trial_until) if on_trial else None
        # The commit point: from here the new release is live; recovery finishes, never undoes (but a
        # release on trial is reverted when its trial did not end).
        switch_link(paths.current, f"releases/{rid}")
        crash_point("switched")
        commit(paths, txn)
        audit(
            paths,
            op,
            "ok",
            archive=_given(opts),
            release=rid,
            name=report.name,
            from_release=previous,
            to_version=report.version,
            allow_downgrade=opts.allow_downgrade,
            targets_sha256=txn.release.targets_sha256,
            **({"signed_ahead_of_clock": txn.release.created} if ahead else {}),
            **({"trial": {"until": trial.deadline, "external": trial.external}} if trial else {}),
        )
        crash_point("committed")
        if trial is not None:
            trial = _trial.activate(paths, trial, hostspec)  # raises (exit 3) after a revert
    _telemetry.observe(f"chiron.{op}.duration", time.monotonic() - started, release=rid)
    res = result(op, rid, txn.release, previous, time.monotonic() - started, notices)
    res.trial = trial.model_dump(mode="json") if trial else None
    return res


def _prepare(
    paths: Paths,
    opts: InstallOptions,
    op: str,
    report: VerifyReport,
    rid: str,
    ref: datetime,
    notices: list[str],
    previous: str | None,
) -> tuple[Txn, HostSection]:
    """Build the new release in releases/<rid> (unreferenced until the switch), health-check it, stage
    its activation and run its pre_switch hook (a failure leaves the live release as it is)."""
    appliance = report.verified
    spec = _release.appliance_spec(appliance, opts.archive)
    envs = [TargetEnvironment.model_validate(e) for e in report.manifest.get("environments", [])]
    lock = _lock.parse_pylock(
        appliance.read("lock/pylock.toml").decode(), envs, allow_sdists=True, where=f"{opts.archive}:lock/pylock.toml"
    )
    env = _release.host_environment(opts.archive, envs, lock)
    txn = Txn(
        op=op,  # type: ignore[arg-type]
        id=rid,
        release=_release.record(report, env.name, str(Path(_given(opts)).absolute())),
        reference_time=format_time(ref),
        keep_releases=spec.host.keep_releases,
    )
    _release.check_space(paths, opts.archive, appliance, lock, env)
    remove_tree(paths.staging / rid)
    _release.stage_metadata(paths, rid, _release.metadata_to_keep(paths, report.trusted, opts.allow_downgrade))
    write_model(paths.txn, txn)
    txn = _release.build_slot(paths, txn, appliance, lock, env, opts.installer)
    health_check(spec.host, paths.release(rid), sorted(lock.selection[env.name]))
    # A Compose application cannot start without its images: fail here, before the switch, not in the trial.
    required = spec.host.images_required or spec.host.compose is not None
    load_images(opts.images, opts.registry, appliance, required, notices)
    _activation.stage(spec, appliance, paths.release(rid), opts.images, opts.registry)
    fsync_dir(paths.releases)
    crash_point("health")
    if spec.host.pre_switch is not None:
        _activation.run_hook("pre_switch", spec.host.pre_switch, _activation.hook_env(paths, rid, previous))
    return txn, spec.host
