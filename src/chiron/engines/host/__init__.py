"""Install, upgrade and roll back appliances on an air-gapped host, crash-safely.

Layout (PREFIX):

    bin/chiron -> ../current/bin/chiron    the installed, trusted tool (verifies later archives)
    current -> releases/<id>               switched by one rename of a symlink (the commit point)
    releases/<id>/{venv,bin/chiron,release.json}
    state/    (or --state-dir)             lock, metadata/ (trusted TUF), floor.json, state.json,
                                           audit.jsonl, txn.json, staging/

Every operation takes the lock, first finishes or undoes an interrupted transaction (txn.json),
verifies everything before changing anything, builds the new release in ``releases/<id>`` (its final
path: venv scripts embed it), health-checks it and switches ``current``. Until the switch the old release is
untouched; after it, recovery only completes the bookkeeping. docs/host.md has the details.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chiron import __version__
from chiron.archive import delta
from chiron.archive.layout import TOOL_TARGET
from chiron.core import audit as _audit
from chiron.core import filelock as _lockfile
from chiron.core import proc as _proc
from chiron.core import telemetry as _telemetry
from chiron.core.fs import copy_range, fsync_dir, write_atomic
from chiron.core.models import HostSection, TargetEnvironment
from chiron.engines.verify import TRUSTED_FILES, HostTrust, VerifiedAppliance, VerifyReport, verified
from chiron.errors import ChironError, EnvironmentProblem, HostStateError, Refused, UsageError, VerificationError
from chiron.sources import lock as _lock
from chiron.trust.client import anchor_from_options

KEPT_APPLIANCE = "appliance"  # releases/<id>/appliance: the verified file the release was installed from
STEPS = ("verified", "staged", "venv", "tool", "health", "switched", "committed")
_EXPIRY_WARNING = timedelta(days=7)


def _crash_point(step: str) -> None:
    """Test hook: CHIRON_TEST_CRASH_AT=<step> kills the process (SIGKILL) right after that step."""
    if os.environ.get("CHIRON_TEST_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Paths:
    prefix: Path
    state: Path

    @classmethod
    def make(cls, prefix: Path, state_dir: Path | None) -> Paths:
        prefix = prefix.absolute()
        return cls(prefix, (state_dir or prefix / "state").absolute())

    @property
    def releases(self) -> Path:
        return self.prefix / "releases"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def metadata(self) -> Path:
        return self.state / "metadata"

    @property
    def state_file(self) -> Path:
        return self.state / "state.json"

    @property
    def audit(self) -> Path:
        return self.state / "audit.jsonl"

    @property
    def txn(self) -> Path:
        return self.state / "txn.json"

    @property
    def floor(self) -> Path:
        return self.state / "floor.json"

    @property
    def staging(self) -> Path:
        return self.state / "staging"


# ---------------------------------------------------------------- small durable primitives


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    fsync_dir(path.parent)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise HostStateError(
            f"{path}: is not valid JSON (state damaged)", hint="restore the state directory from backup"
        ) from None


def _switch_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a new symlink renamed over the old one, then fsync."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- lock and audit


@contextlib.contextmanager
def _locked(paths: Paths, op: str, wait: float) -> Iterator[None]:
    """Hold the host's exclusive lock; wait up to ``wait`` seconds for another operation to end."""
    paths.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _lockfile.hold(paths.state / "lock", op, wait):
        yield


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def audit(paths: Paths, op: str, result: str, **fields: Any) -> None:
    """Append one hash-chained entry to the audit log: who, when, what, result."""
    entry = {"time": _iso(_now()), "user": _user(), "pid": os.getpid(), "op": op, "result": result, **fields}
    paths.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    _audit.append(paths.audit, entry)


# ---------------------------------------------------------------- state


@dataclass
class HostState:
    """state.json: releases, current and previous, and digests of the trusted metadata files."""

    current: str | None = None
    previous: str | None = None
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata_digests: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.host-state/1",
            "current": self.current,
            "previous": self.previous,
            "releases": self.releases,
            "metadata_digests": self.metadata_digests,
        }


def load_state(paths: Paths) -> HostState | None:
    """The host's state, checked for consistency; None on a fresh prefix.

    A prefix with releases but no state, or metadata that does not match the recorded digests, is
    reported and refused: silently re-trusting would re-open rollback attacks.
    """
    data = _read_json(paths.state_file)
    has_releases = paths.releases.is_dir() and any(paths.releases.iterdir())
    if data is None:
        if paths.txn.exists():
            return None  # an interrupted first install: the next operation's recovery settles it
        if has_releases or paths.current.is_symlink():
            raise HostStateError(
                f"{paths.state_file}: missing, but {paths.prefix} holds installed releases (state lost or moved)",
                hint="restore the state directory from backup, or pass --state-dir "
                "(docs/runbooks/install-and-upgrade.md)",
            )
        if paths.metadata.is_dir() and any(paths.metadata.iterdir()):
            raise HostStateError(f"{paths.state}: trusted metadata present but state.json missing (state damaged)")
        return None
    state = HostState(
        current=data.get("current"),
        previous=data.get("previous"),
        releases=dict(data.get("releases", {})),
        metadata_digests=dict(data.get("metadata_digests", {})),
    )
    for name in TRUSTED_FILES:
        path = paths.metadata / name
        want = state.metadata_digests.get(name)
        if not path.is_file():
            raise HostStateError(f"{path}: trusted metadata is missing (state damaged or tampered)")
        if want != _digest(path):
            raise HostStateError(
                f"{path}: trusted metadata differs from the digest recorded in state.json (tampered)",
                hint="restore the state directory from backup; do not re-install over it",
            )
    return state


def _read_floor(paths: Paths) -> datetime | None:
    data = _read_json(paths.floor)
    if data is None:
        return None
    try:
        return _parse_iso(data["floor"])
    except (KeyError, TypeError, ValueError):
        raise HostStateError(f"{paths.floor}: damaged (no valid 'floor' time)", hint="restore it from backup") from None


def _reference_time(paths: Paths) -> tuple[datetime, list[str]]:
    """max(now, floor): a clock set back cannot make expired metadata valid again."""
    now = _now()
    floor = _read_floor(paths)
    if floor is not None and floor > now:
        return floor, [f"this host's clock ({_iso(now)}) is behind the time floor {_iso(floor)}; the floor is used"]
    return now, []


def _raise_floor(paths: Paths, *times: datetime) -> None:
    current = _read_floor(paths)
    new = max([t for t in (current, *times) if t is not None])
    if current is None or new > current:
        _write_json(paths.floor, {"floor": _iso(new)})


# ---------------------------------------------------------------- recovery


def recover(paths: Paths) -> str | None:
    """Finish or undo an interrupted transaction; returns what was done (None if nothing)."""
    txn = _read_json(paths.txn)
    if txn is None:
        _sweep(paths, None)
        return None
    rid = txn["id"]
    linked = os.readlink(paths.current) if paths.current.is_symlink() else None
    if linked == f"releases/{rid}":
        # The switch happened: the new release is live; only the bookkeeping is left to finish.
        _commit(paths, txn)
        outcome = f"finished interrupted {txn['op']} of {rid}"
    else:
        if rid not in ((_read_json(paths.state_file) or {}).get("releases", {})):
            shutil.rmtree(paths.releases / rid, ignore_errors=True)
        shutil.rmtree(paths.staging / rid, ignore_errors=True)
        paths.txn.unlink(missing_ok=True)
        fsync_dir(paths.state)
        outcome = f"undid interrupted {txn['op']} of {rid}; the host stays on {linked or 'nothing'}"
    audit(paths, "recover", "ok", detail=outcome, release=rid)
    _sweep(paths, None)
    return outcome


def _sweep(paths: Paths, keep: str | None) -> None:
    """Remove leftovers no transaction owns (unrecorded release slots, staging), so disk is not leaked.

    Release slots are only removed when state.json exists: without it nothing is known to be spare.
    """
    state = _read_json(paths.state_file)
    if state is not None and paths.releases.is_dir():
        known = set(state.get("releases", {}))
        for p in paths.releases.iterdir():
            if p.is_dir() and p.name not in known and p.name != keep:
                shutil.rmtree(p, ignore_errors=True)
    if paths.staging.is_dir():
        for p in paths.staging.iterdir():
            if p.name != keep:
                shutil.rmtree(p, ignore_errors=True)


def _commit(paths: Paths, txn: dict[str, Any]) -> None:
    """After the switch: install the staged trusted metadata, record state, drop old releases.

    Idempotent, so recovery can run it again after a crash at any point inside it.
    """
    bin_dir = paths.prefix / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "chiron").is_symlink():
        _switch_link(bin_dir / "chiron", "../current/bin/chiron")
    staged = paths.staging / txn["id"] / "metadata"
    paths.metadata.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in TRUSTED_FILES:
        src = staged / name
        if src.is_file():
            write_atomic(paths.metadata / name, src.read_bytes())
        digests[name] = _digest(paths.metadata / name)
    fsync_dir(paths.metadata)
    state = _read_json(paths.state_file) or {}
    releases = dict(state.get("releases", {}))
    releases[txn["id"]] = txn["release"]
    previous = state.get("current") if state.get("current") != txn["id"] else state.get("previous")
    keep = {txn["id"], previous}
    for rid in sorted(releases, key=lambda r: str(releases[r].get("installed", ""))):  # oldest first
        if rid not in keep and len(releases) > txn.get("keep_releases", 2):
            shutil.rmtree(paths.releases / rid, ignore_errors=True)
            del releases[rid]
    _write_json(
        paths.state_file,
        HostState(current=txn["id"], previous=previous, releases=releases, metadata_digests=digests).as_dict(),
    )
    _raise_floor(paths, _parse_iso(txn["reference_time"]), *(_created(txn["release"])))
    shutil.rmtree(paths.staging / txn["id"], ignore_errors=True)
    paths.txn.unlink(missing_ok=True)
    fsync_dir(paths.state)


def _created(release: dict[str, Any]) -> list[datetime]:
    try:
        return [_parse_iso(release["created"])]
    except (KeyError, ValueError):
        return []


# ---------------------------------------------------------------- install / upgrade


@dataclass
class HostResult:
    op: str
    release: str
    name: str
    version: str
    previous: str | None
    installer: str
    environment: str
    seconds: float
    notices: list[str] = field(default_factory=list)
    changed: bool = True  # False when the archive was already the live release (a re-run)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.host-result/1",
            "op": self.op,
            "changed": self.changed,
            "release": self.release,
            "appliance": {"name": self.name, "version": self.version},
            "previous": self.previous,
            "installer": self.installer,
            "environment": self.environment,
            "notices": self.notices,
            "seconds": round(self.seconds, 3),
        }


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


def _given(opts: InstallOptions) -> str:
    """The file the operator named: the delta when the archive was rebuilt from one."""
    return str(opts.delta or opts.archive)


def install(opts: InstallOptions) -> HostResult:
    """First installation on a host: verify against an anchor, then create the first release."""
    anchor = anchor_from_options(
        opts.root_file, opts.root_sha256, trust_on_first_use=opts.trust_on_first_use, required=True
    )
    paths = Paths.make(opts.prefix, opts.state_dir)
    with _locked(paths, "install", opts.wait):
        recover(paths)
        state = load_state(paths)
        if state is not None and state.current is not None:
            raise Refused(
                f"{paths.prefix}: already has release {state.current} installed",
                hint=f"use 'chiron upgrade {opts.archive} --prefix {paths.prefix}'",
            )
        ref, notices = _reference_time(paths)
        with verified(
            opts.archive,
            anchor=anchor,
            show_progress=opts.show_progress,
            reference_time=ref,
        ) as report:
            notices += report.notices
            return _apply(paths, opts, "install", report, None, ref, notices)


def upgrade(opts: InstallOptions) -> HostResult:
    """Verify a newer archive against the host's trusted metadata, install it beside the old, switch."""
    paths = Paths.make(opts.prefix, opts.state_dir)
    with _locked(paths, "upgrade", opts.wait):
        recover(paths)
        state = load_state(paths)
        if state is None or state.current is None:
            raise UsageError(
                f"{paths.prefix}: nothing is installed here",
                hint=f"install first: chiron install {opts.archive} --prefix {paths.prefix} --root-sha256 HEX",
            )
        if opts.root_file or opts.root_sha256:
            raise UsageError(
                "upgrade verifies against the host's trusted metadata; --root/--root-sha256 are for install"
            )
        if delta.is_delta(opts.archive):
            # Rebuild the full appliance from the delta and the appliances kept with the releases;
            # from here on it is upgraded like any full appliance (verified completely first).
            rebuilt = paths.staging / "delta" / (opts.archive.name.removesuffix(".delta") + ".pex")
            sources = [p / KEPT_APPLIANCE for p in sorted(paths.releases.iterdir()) if (p / KEPT_APPLIANCE).is_file()]
            try:
                delta.apply(opts.archive, sources, rebuilt)
            except ChironError as exc:
                result = "refused" if isinstance(exc, Refused) else "failed"
                audit(paths, "upgrade", result, archive=_given(opts), reason=exc.diagnostics())
                raise
            try:
                return _upgrade(paths, dataclasses.replace(opts, archive=rebuilt, delta=opts.archive), state)
            finally:
                rebuilt.unlink(missing_ok=True)  # the new release keeps its own copy
        return _upgrade(paths, opts, state)


def _upgrade(paths: Paths, opts: InstallOptions, state: HostState) -> HostResult:
    """Upgrade to a full appliance (under the lock, after recovery, with a release installed)."""
    ref, notices = _reference_time(paths)
    trust = HostTrust(paths.metadata, reference_time=ref, allow_rollback=opts.allow_downgrade)
    with verified(opts.archive, host=trust, show_progress=opts.show_progress) as report:
        return _upgrade_verified(paths, opts, state, report, ref, notices)


def _upgrade_verified(
    paths: Paths, opts: InstallOptions, state: HostState, report: VerifyReport, ref: datetime, notices: list[str]
) -> HostResult:
    notices += report.notices
    if state.current is None:
        raise UsageError(f"{paths.prefix}: nothing is installed here")
    current = state.releases[state.current]
    if report.ok and report.trusted and _targets_sha(report) == current.get("targets_sha256"):
        # Already the live release (e.g. an upgrade re-run after it had switched): nothing to do.
        audit(paths, "upgrade", "noop", archive=_given(opts), release=state.current)
        result = _result("upgrade", state.current, current, state.previous, 0.0, notices)
        result.changed = False
        return result
    if report.ok:
        _check_version(paths, opts, report, current)
    elif report.rollback:
        audit(paths, "upgrade", "refused", archive=_given(opts), reason=report.problems[0])
        raise Refused(report.problems[0], hint="pass --allow-downgrade to install an older release deliberately")
    return _apply(paths, opts, "upgrade", report, state, ref, notices)


def _targets_sha(report: VerifyReport) -> str:
    return hashlib.sha256(report.trusted["targets.json"]).hexdigest()


def _result(
    op: str, rid: str, rel: dict[str, Any], previous: str | None, seconds: float, notices: list[str]
) -> HostResult:
    return HostResult(
        op=op,
        release=rid,
        name=str(rel["name"]),
        version=str(rel["version"]),
        previous=previous,
        installer=str(rel.get("installer", "")),
        environment=str(rel.get("environment", "")),
        seconds=seconds,
        notices=notices,
    )


def _check_version(paths: Paths, opts: InstallOptions, report: VerifyReport, current: dict[str, Any]) -> None:
    from packaging.version import Version

    if report.name != current["name"]:
        audit(paths, "upgrade", "refused", archive=_given(opts), reason="different appliance")
        raise Refused(f"{opts.archive} is appliance '{report.name}', this host runs '{current['name']}'")
    if Version(str(report.version)) < Version(current["version"]) and not opts.allow_downgrade:
        audit(
            paths,
            "upgrade",
            "refused",
            archive=_given(opts),
            reason="downgrade",
            from_version=current["version"],
            to_version=report.version,
        )
        raise Refused(
            f"{opts.archive} is version {report.version}, older than the installed {current['version']}",
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
    _crash_point("verified")
    previous = state.current if state else None
    rid = _release_id(paths, report)
    stage = paths.staging / rid
    with _telemetry.span(f"chiron.{op}", release=rid, version=str(report.version)):
        try:
            txn = _prepare_release(paths, opts, op, report, rid, stage, ref, notices)
        except BaseException as exc:
            # Nothing outside the new slot and staging was touched: remove them and stay where we are.
            shutil.rmtree(paths.releases / rid, ignore_errors=True)
            shutil.rmtree(stage, ignore_errors=True)
            paths.txn.unlink(missing_ok=True)
            reason = exc.diagnostics() if isinstance(exc, ChironError) else f"{type(exc).__name__}: {exc}"
            audit(paths, op, "failed", archive=_given(opts), release=rid, reason=reason, stays_on=previous)
            raise
        release = txn["release"]
        # The commit point: from here the new release is live; recovery finishes, never undoes.
        _switch_link(paths.current, f"releases/{rid}")
        _crash_point("switched")
        _commit(paths, txn)
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
            targets_sha256=release["targets_sha256"],
        )
        _crash_point("committed")
    _telemetry.observe(f"chiron.{op}.duration", time.monotonic() - started, release=rid)
    return _result(op, rid, release, previous, time.monotonic() - started, notices)


def _prepare_release(
    paths: Paths,
    opts: InstallOptions,
    op: str,
    report: VerifyReport,
    rid: str,
    stage: Path,
    ref: datetime,
    notices: list[str],
) -> dict[str, Any]:
    """Build the new release in releases/<rid> (unreferenced until the switch) and health-check it."""
    from chiron.core.spec import load_spec_bytes

    appliance = report.verified
    spec = load_spec_bytes(appliance.read("spec/appliance.toml"), f"{opts.archive}:spec/appliance.toml").spec
    envs = [TargetEnvironment.model_validate(e) for e in report.manifest.get("environments", [])]
    lock = _lock.parse_pylock(
        appliance.read("lock/pylock.toml").decode(), envs, allow_sdists=True, where=f"{opts.archive}:lock/pylock.toml"
    )
    env = _host_environment(opts.archive, envs, lock)
    release = {
        "name": report.name,
        "version": report.version,
        "created": report.manifest.get("created"),
        "environment": env.name,
        "metadata_versions": {r: v["version"] for r, v in report.roles.items()},
        "installed": _iso(_now()),
        "installer": "",
        "archive": str(Path(_given(opts)).absolute()),
        "targets_sha256": _targets_sha(report),
    }
    txn = {
        "op": op,
        "id": rid,
        "release": release,
        "reference_time": _iso(ref),
        "keep_releases": spec.host.keep_releases,
    }
    _check_space(paths, opts.archive, appliance, lock, env)
    paths.releases.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "metadata").mkdir(parents=True)
    for name, data in report.trusted.items():
        (stage / "metadata" / name).write_bytes(_newer(paths.metadata / name, data))
    _write_json(paths.txn, txn)
    slot = paths.releases / rid
    slot.mkdir()
    wheels, requirements = _stage_wheels(appliance, lock, env, stage)
    _crash_point("staged")
    release["installer"] = _create_venv(slot / "venv", wheels, requirements, opts.installer)
    _write_json(paths.txn, txn)
    _crash_point("venv")
    _place_tool(appliance, slot / "bin" / "chiron")
    # The appliance itself stays with its release: the base that later deltas are rebuilt from.
    _keep_appliance(appliance, slot / KEPT_APPLIANCE)
    _write_json(slot / "release.json", release)
    _crash_point("tool")
    _health_check(spec.host, slot, sorted(lock.selection[env.name]))
    _load_images(opts, report, spec.host, notices)
    fsync_dir(paths.releases)
    _crash_point("health")
    return txn


def _load_images(opts: InstallOptions, report: VerifyReport, hostspec: HostSection, notices: list[str]) -> None:
    """The images seam: load the appliance's images (re-hashed) into the Docker Engine, or leave them.

    Loading is idempotent (by digest), so it happens before the switch; a host without an engine
    still gets its Python release unless the spec says images are required.
    """
    import platform

    images = report.manifest.get("images") or []
    if not images or opts.images == "skip":
        if images:
            notices.append(f"{len(images)} image(s) left in the appliance (--images skip)")
        return
    from chiron.sources import images as _images

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

    read = report.verified.read  # every blob is re-hashed against the trusted targets as it is read

    try:
        if opts.images == "push":
            if not opts.registry:
                raise UsageError("--images push needs --registry HOST[:PORT]")
            pushed = _images.push_to_registry(read, images, f"linux/{arch}", opts.registry)
            notices.append(f"pushed {len(pushed)} image(s) to {opts.registry}: {', '.join(pushed)}")
            return
        loaded = _images.load_into_engine(read, images, f"linux/{arch}")
    except EnvironmentProblem as exc:
        if hostspec.images_required:
            raise
        verb = "pushed" if opts.images == "push" else "loaded"
        notices.append(f"images not {verb}: {exc.diagnostics()}; the Python release is installed anyway")
        return
    notices.append(f"loaded {len(loaded)} image(s) into the Docker Engine: {', '.join(loaded)}")


def _newer(trusted: Path, candidate: bytes) -> bytes:
    """The newer of the host's trusted metadata file and a candidate: a deliberate downgrade installs
    older software but never lowers the metadata versions the host trusts."""
    from tuf.api.metadata import Metadata

    if not trusted.is_file():
        return candidate
    old = trusted.read_bytes()
    return old if Metadata.from_bytes(old).signed.version > Metadata.from_bytes(candidate).signed.version else candidate


def _release_id(paths: Paths, report: VerifyReport) -> str:
    base = f"{report.name}-{report.version}-{report.roles['targets']['version']}"
    rid, n = base, 1
    while (paths.releases / rid).exists():
        n += 1
        rid = f"{base}.{n}"
    return rid


def _host_environment(archive: Path, envs: list[TargetEnvironment], lock: _lock.Lock) -> TargetEnvironment:
    """The appliance environment this interpreter can use: same Python, every wheel's tags supported."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    host_tags = set(sys_tags())
    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    for env in envs:
        if env.python_version != host_py:
            continue
        arts = lock.selection.get(env.name, {}).values()
        if all(not a.is_wheel or parse_wheel_filename(a.filename)[3] & host_tags for a in arts):
            return env
    served = ", ".join(f"{e.name} (Python {e.python_version}, {' '.join(e.platforms)})" for e in envs)
    raise EnvironmentProblem(
        f"no environment of {archive.name} fits this host (Python {host_py}, {next(iter(sys_tags()))})",
        hint=f"the appliance serves: {served}",
    )


def space_needed(wheel_bytes: int, tool_bytes: int) -> int:
    """Bytes a release needs: unpacked wheels take ~3x their compressed size plus bytecode, staging
    holds them once more; the tool is copied in and unpacked by pex on first run."""
    return 4 * wheel_bytes + 2 * tool_bytes + (32 << 20)


def _check_space(
    paths: Paths, archive: Path, appliance: VerifiedAppliance, lock: _lock.Lock, env: TargetEnvironment
) -> None:
    """Refuse before writing anything when the prefix's filesystem cannot hold the new release."""
    wheel_bytes = sum(appliance.target(f"wheels/{a.filename}").length for a in lock.selection[env.name].values())
    tool = appliance.target(TOOL_TARGET).length
    need = space_needed(wheel_bytes, tool) + archive.stat().st_size
    # The release goes under the prefix, the staged wheels under the state directory: they may be on
    # different filesystems, and on the same one they add up.
    needs: dict[int, tuple[Path, int]] = {}
    for where, amount in ((paths.prefix, need - wheel_bytes), (paths.state, wheel_bytes)):
        probe = next(p for p in (where, *where.parents) if p.exists())
        dev = probe.stat().st_dev
        needs[dev] = (needs.get(dev, (probe, 0))[0], needs.get(dev, (probe, 0))[1] + amount)
    for probe, amount in needs.values():
        free = shutil.disk_usage(probe).free
        if free < amount:
            raise EnvironmentProblem(
                f"not enough free space on {probe}: this release needs about {amount >> 20} MiB, "
                f"{free >> 20} MiB are free",
                hint="free space or choose another --prefix / --state-dir; nothing was changed",
            )


def _keep_appliance(appliance: VerifiedAppliance, dest: Path) -> None:
    """Copy the whole appliance through the descriptor it was verified from."""
    if not copy_range(appliance.reader.fd, 0, appliance.reader.size, dest, None):
        raise VerificationError([f"{appliance.path}: changed size after verification (the archive is being modified?)"])


def _stage_wheels(
    appliance: VerifiedAppliance, lock: _lock.Lock, env: TargetEnvironment, stage: Path
) -> tuple[Path, Path]:
    wheels = stage / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for art in lock.selection[env.name].values():
        appliance.copy(f"wheels/{art.filename}", wheels / art.filename)
    req = stage / "requirements.txt"
    req.write_bytes(appliance.read(f"lock/requirements-{env.name}.txt"))
    return wheels, req


def _uv() -> _proc.Program | None:
    try:
        import uv  # type: ignore[import-not-found, unused-ignore]

        path = uv.find_uv_bin()
        return _proc.Program("uv", (str(path),))
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    return _proc.Program("uv", (found,)) if found else None


def _base_python() -> str:
    # Inside a pex venv or any venv, create the release venv from the real interpreter.
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def _create_venv(venv: Path, wheels: Path, requirements: Path, choice: str) -> str:
    """Create the release environment offline from the staged wheels, hashes enforced."""
    python = _proc.Program("python", (_base_python(),))
    uv = _uv() if choice in ("auto", "uv") else None
    if choice == "uv" and uv is None:
        raise EnvironmentProblem("--installer uv: uv was not found", hint="install uv or use --installer pip")
    common = ["--no-index", "--find-links", str(wheels), "--require-hashes", "-r", str(requirements)]
    if uv is not None:
        _proc.run(python, ["-m", "venv", "--without-pip", str(venv)], what="creating the release venv")
        env = dict(os.environ, UV_NO_CONFIG="1", UV_OFFLINE="1")
        env.pop("VIRTUAL_ENV", None)
        _proc.run(
            uv,
            [
                "pip",
                "install",
                "--offline",
                "--no-cache",
                "--compile-bytecode",
                "--python",
                str(venv / "bin" / "python"),
                *common,
            ],
            env=env,
            what="installing the wheelhouse with uv",
        )
        return "uv"
    _proc.run(python, ["-m", "venv", str(venv)], what="creating the release venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    vpy = _proc.Program("pip", (str(venv / "bin" / "python"), "-m", "pip"))
    _proc.run(vpy, ["install", "--isolated", "--no-input", *common], env=env, what="installing the wheelhouse with pip")
    return "pip"


def _place_tool(appliance: VerifiedAppliance, dest: Path) -> None:
    """The installed tool: the archive's shebang and tool zip, re-hashed, without the payload."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    appliance.copy(TOOL_TARGET, dest, prefix=appliance.layout.shebang)
    os.chmod(dest, 0o755)  # noqa: S103 - the tool is a program


_IMPORT_CHECK = r"""
import importlib, importlib.metadata as md, json, sys
bad = []
for name in sys.argv[1:]:
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        bad.append(f"{name}: not installed")
        continue
    tops = (d.read_text("top_level.txt") or "").split()
    if not tops:
        tops = sorted({f.parts[0].removesuffix(".py") for f in (d.files or [])
                       if f.parts and f.parts[0] not in ("..", "bin")
                       and not f.parts[0].endswith((".dist-info", ".data", ".pth"))
                       and (len(f.parts) > 1 or f.parts[0].endswith(".py"))})
    for t in tops:
        if t.isidentifier() and not t.startswith("_"):
            try:
                importlib.import_module(t)
            except Exception as e:
                bad.append(f"{name}: import {t}: {type(e).__name__}: {e}")
print(json.dumps(bad))
"""


def _health_check(hostspec: HostSection, slot: Path, distributions: list[str]) -> None:
    """Every distribution of the appliance importable, dependencies consistent, then the spec's hook."""
    py = str(slot / "venv" / "bin" / "python")
    try:
        proc = subprocess.run(
            [py, "-c", _IMPORT_CHECK, *distributions], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem("health check: importing the distributions took over 600 s") from None
    if proc.returncode != 0:
        raise EnvironmentProblem(f"health check: the new environment cannot run Python: {proc.stderr.strip()[-300:]}")
    bad = json.loads(proc.stdout.strip().splitlines()[-1])
    if bad:
        raise EnvironmentProblem(f"health check failed: {bad[0]}" + (f" (and {len(bad) - 1} more)" if bad[1:] else ""))
    uv = _uv()
    if uv is not None:
        _proc.run(uv, ["pip", "check", "--python", py], timeout=300, what="in the health check's dependency check")
    if hostspec.health_check:
        env = dict(os.environ, CHIRON_RELEASE=str(slot), PATH=f"{slot / 'venv' / 'bin'}:{os.environ.get('PATH', '')}")
        try:
            hook = subprocess.run(
                hostspec.health_check,
                env=env,
                capture_output=True,
                text=True,
                timeout=hostspec.health_check_timeout,
                check=False,
            )
        except FileNotFoundError:
            raise EnvironmentProblem(f"health check hook: {hostspec.health_check[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(
                f"health check hook did not finish within {hostspec.health_check_timeout} s"
            ) from None
        if hook.returncode != 0:
            tail = (hook.stderr or hook.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise EnvironmentProblem(f"health check hook failed (exit {hook.returncode}): {tail[0]}")


# ---------------------------------------------------------------- rollback and status


def rollback(prefix: Path, state_dir: Path | None, wait: float = 0.0) -> HostResult:
    """Switch back to the previous release (kept on disk); logged."""
    started = time.monotonic()
    paths = Paths.make(prefix, state_dir)
    with _locked(paths, "rollback", wait):
        recover(paths)
        state = load_state(paths)
        if state is None or state.current is None:
            raise UsageError(f"{paths.prefix}: nothing is installed here")
        if not state.previous or not (paths.releases / state.previous).is_dir():
            raise Refused(f"{paths.prefix}: there is no previous release to roll back to")
        target, old = state.previous, state.current
        _switch_link(paths.current, f"releases/{target}")
        state.current, state.previous = target, old
        _write_json(paths.state_file, state.as_dict())
        rel = state.releases[target]
        audit(paths, "rollback", "ok", from_release=old, to_release=target, to_version=rel["version"])
    return _result("rollback", target, rel, old, time.monotonic() - started, [])


def recover_only(prefix: Path, state_dir: Path | None, wait: float = 0.0) -> str | None:
    """Finish or undo an interrupted operation and nothing else (``chiron recover``)."""
    paths = Paths.make(prefix, state_dir)
    with _locked(paths, "recover", wait):
        return recover(paths)


def status(prefix: Path, state_dir: Path | None) -> dict[str, Any]:
    """Releases, the current one, trusted metadata versions and expiry, last operations."""
    from tuf.api.metadata import Metadata

    paths = Paths.make(prefix, state_dir)
    state = load_state(paths)
    if state is None and not paths.txn.exists():
        raise UsageError(f"{paths.prefix}: nothing is installed here (no {paths.state_file})")
    state = state or HostState()
    now = _now()
    metadata: dict[str, Any] = {}
    warnings: list[str] = []
    for name in TRUSTED_FILES if state.metadata_digests else ():
        md = Metadata.from_bytes((paths.metadata / name).read_bytes())
        role = name.removesuffix(".json")
        expires = md.signed.expires
        metadata[role] = {"version": md.signed.version, "expires": _iso(expires)}
        if expires <= now:
            warnings.append(f"trusted {role} metadata expired on {_iso(expires)}: the next upgrade must carry newer")
        elif expires - now < _EXPIRY_WARNING:
            warnings.append(f"trusted {role} metadata expires on {_iso(expires)}")
    current = None
    if state.current:
        rel = state.releases.get(state.current, {})
        current = {
            "release": state.current,
            "name": rel.get("name"),
            "version": rel.get("version"),
            "environment": rel.get("environment"),
            "installed": rel.get("installed"),
        }
    ops: list[dict[str, Any]] = []
    if paths.audit.is_file():
        for line in paths.audit.read_text(errors="replace").splitlines()[-10:]:
            try:
                ops.append(json.loads(line))
            except ValueError:
                warnings.append("the audit log has a damaged line: run 'chiron audit verify'")
    floor = _read_floor(paths)
    return {
        "schema": "chiron.status/1",
        "prefix": str(paths.prefix),
        "state_dir": str(paths.state),
        "current": current,
        "previous": state.previous,
        "releases": state.releases,
        "metadata": metadata,
        "time_floor": _iso(floor) if floor else None,
        "pending_transaction": _read_json(paths.txn),
        "warnings": warnings,
        "last_operations": ops,
        "chiron_version": __version__,
    }


def inventory(prefix: Path, state_dir: Path | None) -> dict[str, Any]:
    """What this host holds, for a delta made to fit it (``chiron inventory``; carried to the mirror)."""
    paths = Paths.make(prefix, state_dir)
    state = load_state(paths)
    if state is None or state.current is None:
        raise UsageError(f"{paths.prefix}: nothing is installed here")
    kept = [rid for rid in sorted(state.releases) if (paths.releases / rid / KEPT_APPLIANCE).is_file()]
    releases = [
        {
            "release": rid,
            "version": state.releases[rid]["version"],
            "metadata_versions": state.releases[rid].get("metadata_versions", {}),
        }
        for rid in kept
    ]
    name = str(state.releases[state.current]["name"])
    return delta.inventory(name, releases, [paths.releases / rid / KEPT_APPLIANCE for rid in kept])
