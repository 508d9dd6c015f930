"""``chiron doctor``: before an operation, probe what it needs and say what is missing and the fix."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiron.errors import ChironError

if TYPE_CHECKING:
    from chiron.archive.reader import ArchiveReader
    from chiron.engines.host import Paths


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    severity: str = "error"  # "error" blocks the operation, "warning" does not

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "severity": self.severity, "detail": self.detail, "fix": self.fix}


def doctor(archive: Path | None, prefix: Path | None, state_dir: Path | None) -> list[Check]:
    """Run every applicable probe; nothing is changed on the host.

    An archive that is missing, or not a regular file (a FIFO would block, a device never end), is a
    usage error (exit 2), as for every command given a file: there is nothing to probe.
    """
    if archive is not None:
        from chiron.archive.reader import open_regular

        os.close(open_regular(archive))
    checks = [_python_check()]
    if archive is not None:
        check, report = _archive_check(archive)
        checks.append(check)
        if report is not None:
            checks.append(_environment_check(archive, report))
            checks.append(_images_check(report))
            if report.compose is not None:
                checks.append(_compose_check(report.compose))
            if prefix is not None:
                checks.append(_disk_check(archive, report, prefix, state_dir))
    checks += _installer_checks()
    checks.append(
        _program_check(
            "ssh-keygen",
            "checks the detached signature before anything runs",
            "install openssh-client",
            severity="warning",
        )
    )
    if prefix is not None:
        checks += _state_checks(prefix, state_dir)
    return checks


def _python_check() -> Check:
    ver = sys.version_info
    ok = ver >= (3, 11)
    return Check(
        "python",
        ok,
        f"Python {ver.major}.{ver.minor}.{ver.micro} at {getattr(sys, '_base_executable', sys.executable)}",
        "" if ok else "install Python 3.11 or newer",
    )


class _Unreadable(Exception):
    """A member doctor needs cannot be read as what it should be (the message names it)."""


def _archive_check(archive: Path) -> tuple[Check, _Light | None]:
    """The archive's structure (index, footer, how the members tile the file) and the few members
    doctor reads; nothing here is trusted (run verify for that)."""
    from chiron.archive.reader import ArchiveReader, check_tiling
    from chiron.errors import FormatError, UsageError

    fix = "copy the file again, or rebuild the appliance"
    try:
        with ArchiveReader(archive) as reader:
            problems = check_tiling(reader.layout)
            if problems:
                return Check("archive", False, f"{archive}: {problems[0]}", fix), None
            light = _light_report(reader)
            members, size = len(reader.layout.members), reader.size
    except UsageError as exc:  # unreadable
        return Check("archive", False, exc.message, "give the path of the appliance"), None
    except (FormatError, OSError, _Unreadable) as exc:
        return Check("archive", False, f"{archive}: not readable as an appliance: {exc}", fix), None
    return Check("archive", True, f"{archive}: {members} members, {size} bytes (run verify to trust it)"), light


@dataclass
class _Light:
    """What doctor reads from an archive without verifying it (it only advises)."""

    manifest: dict[str, Any]
    lengths: dict[str, int]
    lock_text: str
    images_required: bool = False
    compose: str | None = None  # [host].compose: the application runs under the Compose CLI


_MEMBER_LIMIT = 64 << 20  # the manifest, lock and spec doctor reads: far below, whatever the archive says


def _light_report(reader: ArchiveReader) -> _Light:
    import json

    def member(name: str) -> bytes:
        return reader.read(name, _MEMBER_LIMIT) if reader.has(name) else b""

    try:
        manifest = json.loads(member("appliance.json") or b"{}")
    except (ValueError, RecursionError):
        raise _Unreadable("member appliance.json: is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise _Unreadable("member appliance.json: is not a JSON object")
    try:
        lock_text = member("lock/pylock.toml").decode()
    except UnicodeDecodeError:
        raise _Unreadable("member lock/pylock.toml: is not UTF-8 text") from None
    try:
        spec = tomllib.loads(member("spec/appliance.toml").decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError):
        spec = {}
    host = spec.get("host")
    required = isinstance(host, dict) and host.get("images_required") is True
    compose = host.get("compose") if isinstance(host, dict) and isinstance(host.get("compose"), str) else None
    regions = reader.layout.regions()
    # A Compose application cannot run without its images: the engine is then required.
    return _Light(manifest, {n: r[1] for n, r in regions.items()}, lock_text, required or compose is not None, compose)


def _environment_check(archive: Path, light: _Light) -> Check:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    from chiron.core.models import TargetEnvironment
    from chiron.sources import lock as _lock

    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    tags = set(sys_tags())
    try:
        envs = [TargetEnvironment.model_validate(e) for e in light.manifest.get("environments", [])]
        lock = _lock.parse_pylock(light.lock_text, envs, allow_sdists=True, where=f"{archive}:lock/pylock.toml")
    except (ChironError, ValueError) as exc:
        return Check("environment", False, f"cannot read the appliance's environments: {exc}", "rebuild the appliance")
    for env in envs:
        arts = lock.selection.get(env.name, {}).values()
        if env.python_version == host_py and all(
            not a.is_wheel or parse_wheel_filename(a.filename)[3] & tags for a in arts
        ):
            return Check("environment", True, f"environment {env.name} fits this host (Python {host_py})")
    served = ", ".join(f"{e.name} (Python {e.python_version}, {' '.join(e.platforms)})" for e in envs)
    return Check(
        "environment",
        False,
        f"no environment fits this host (Python {host_py}, {next(iter(sys_tags()))}); the appliance serves {served}",
        "run chiron with one of the served Python versions, or build an appliance for this host's platform",
    )


def _images_check(light: _Light) -> Check:
    images = light.manifest.get("images") or []
    if not images:
        return Check("images", True, "the appliance carries no container images: no engine needed")
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        path = host.removeprefix("unix://")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(path)
            return Check("images", True, f"{len(images)} image(s); a Docker Engine answers at {path}")
        except OSError as exc:
            return Check(
                "images",
                False,
                f"{len(images)} image(s), but no Docker Engine at {path}: {exc.strerror}"
                + ("" if light.images_required else " (images are optional: the Python release installs anyway)"),
                "start dockerd so the images can be loaded",
                severity="error" if light.images_required else "warning",
            )
    return Check("images", True, f"{len(images)} image(s); DOCKER_HOST={host} (not probed)", severity="warning")


def _compose_check(compose: str) -> Check:
    from chiron.engines.host.activation import find_compose

    cli = find_compose()
    if cli is None:
        return Check(
            "compose",
            False,
            f"the appliance runs its application with Compose (files/{compose}), but neither 'docker compose' "
            "nor 'docker-compose' is installed",
            "install the Compose plugin (docker compose) or Debian's docker-compose",
        )
    return Check("compose", True, f"{' '.join(cli)} brings up the application's Compose project (files/{compose})")


def _disk_check(archive: Path, light: _Light, prefix: Path, state_dir: Path | None) -> Check:
    from chiron.engines.host import space_needed

    wheels = sum(n for name, n in light.lengths.items() if name.startswith("wheels/"))
    tool = light.lengths.get("_archive/tool.zip", 0)
    need = space_needed(wheels, tool)  # the estimate install refuses on
    probe = next(p for p in (prefix, *prefix.absolute().parents) if p.exists())
    free = shutil.disk_usage(probe).free
    ok = free >= need
    return Check(
        "disk",
        ok,
        f"{probe}: {free >> 20} MiB free, a release of this appliance needs about {need >> 20} MiB",
        "" if ok else "free space on that filesystem or choose another --prefix",
    )


def _installer_checks() -> list[Check]:
    from chiron.engines.host import find_uv

    uv = find_uv()
    import importlib.util

    pip = importlib.util.find_spec("pip") is not None or shutil.which("pip") is not None
    if uv is not None:
        return [Check("installer", True, f"uv at {uv.argv[0]} (pip fallback {'present' if pip else 'absent'})")]
    if pip:
        return [
            Check(
                "installer",
                True,
                "uv not found: installs use pip (about 2-3x slower)",
                "install uv for faster installs",
                severity="warning",
            )
        ]
    return [
        Check(
            "installer",
            False,
            "neither uv nor pip is available to create environments",
            "install uv or pip for this Python (python3 -m ensurepip)",
        )
    ]


def _program_check(name: str, why: str, fix: str, *, severity: str = "error") -> Check:
    found = shutil.which(name)
    if found:
        return Check(name, True, f"{found} ({why})", severity=severity)
    return Check(name, False, f"{name} not found ({why})", fix, severity=severity)


def _state_checks(prefix: Path, state_dir: Path | None) -> list[Check]:
    from chiron.engines.host import Paths

    paths = Paths.make(prefix, state_dir)
    checks = [_directories_check(paths)]
    if not paths.state.exists():
        parent = next(p for p in paths.state.parents if p.exists())
        ok = os.access(parent, os.W_OK)
        checks.append(
            Check(
                "state",
                ok,
                f"{paths.state} does not exist yet; {parent} is{'' if ok else ' not'} writable",
                "" if ok else f"run as a user who can write {parent}, or pass --state-dir",
            )
        )
        return checks
    mode = stat.S_IMODE(paths.state.stat().st_mode)
    loose = mode & 0o022
    writable = os.access(paths.state, os.W_OK)
    checks.append(
        Check(
            "state permissions",
            writable and not loose,
            f"{paths.state}: mode {mode:04o}, {'writable' if writable else 'NOT writable'} by this user",
            ""
            if writable and not loose
            else f"chmod 700 {paths.state} and run as its owner: others must not rewrite it",
        )
    )
    return checks + _integrity_checks(paths)


def _directories_check(paths: Paths) -> Check:
    from chiron.engines.host import check_host_dirs

    try:
        check_host_dirs(paths)
    except ChironError as exc:
        return Check("directories", False, exc.message, exc.hint or "")
    return Check("directories", True, f"{paths.prefix}: owner and modes let no other user write it")


def _integrity_checks(paths: Paths) -> list[Check]:
    """State well-formed and agreeing with the disk, no release it does not know, the clock."""
    from chiron.engines.host import load_state, read_floor, unknown_releases
    from chiron.errors import HostStateError

    try:
        state = load_state(paths)
        floor = read_floor(paths)
    except HostStateError as exc:
        return [Check("state integrity", False, exc.message, exc.hint or "restore the state from backup")]
    detail = "state.json is well-formed, agrees with the current link, and the trusted metadata matches its digests"
    checks = [Check("state integrity", True, detail)]
    unknown = unknown_releases(paths, state) if state is not None else []
    if unknown:
        checks.append(
            Check(
                "releases",
                False,
                f"{len(unknown)} release(s) on disk that state.json does not know: {', '.join(unknown)} "
                "(state restored from a backup?)",
                f"remove them if not needed (rm -rf {paths.releases}/ID); chiron never deletes a completed release "
                "it does not know",
                severity="warning",
            )
        )
    now = datetime.now(UTC)
    if floor is not None and now < floor:
        checks.append(
            Check(
                "clock",
                False,
                f"the clock ({now:%Y-%m-%dT%H:%M:%SZ}) is behind the time floor "
                f"{floor:%Y-%m-%dT%H:%M:%SZ} by {floor - now}",
                "set the clock right; until then chiron checks expiry against the floor",
            )
        )
    else:
        shown = f"{floor:%Y-%m-%dT%H:%M:%SZ}" if floor else "none yet"
        checks.append(Check("clock", True, f"the clock is at or after the time floor ({shown})"))
    return checks
