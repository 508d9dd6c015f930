"""Building a release in ``releases/<id>``: the staged trusted metadata, the environment that fits this
host, the free-space check, the staged wheels, the venv (uv or pip, offline), the tool and the kept
appliance. Nothing refers to the slot until the switch."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from datetime import datetime
from pathlib import Path

from chiron.archive.layout import TOOL_TARGET
from chiron.core import proc as _proc
from chiron.core.fs import copy_range
from chiron.core.hoststate import ReleaseRecord, Txn, check_release_id, format_time
from chiron.core.models import ApplianceSpec, TargetEnvironment
from chiron.engines.host.paths import (
    KEPT_APPLIANCE,
    PRIVATE_DIR,
    PUBLIC_DIR,
    Paths,
    crash_point,
    ensure_dir,
    naming,
    now,
    remove_tree,
)
from chiron.engines.host.state import write_model
from chiron.engines.verify import VerifiedAppliance, VerifyReport
from chiron.errors import EnvironmentProblem, Refused, VerificationError
from chiron.sources import lock as _lock


def targets_sha256(report: VerifyReport) -> str:
    """What identifies a release's content: the sha256 of its trusted targets metadata."""
    return hashlib.sha256(report.trusted["targets.json"]).hexdigest()


def appliance_spec(appliance: VerifiedAppliance, where: Path) -> ApplianceSpec:
    from chiron.core.spec import load_spec_bytes

    return load_spec_bytes(appliance.read("spec/appliance.toml"), f"{where}:spec/appliance.toml").spec


def release_id(paths: Paths, report: VerifyReport) -> str:
    """NAME-VERSION-T, then .2, .3, ... when taken: one safe path segment, or refused."""
    base = f"{report.name}-{report.version}-{report.roles['targets']['version']}"
    try:
        check_release_id(base)
    except ValueError as exc:
        raise Refused(f"{report.path}: its name and version do not make a release id: {exc}") from None
    rid, n = base, 1
    while os.path.lexists(paths.releases / rid):
        n += 1
        rid = f"{base}.{n}"
    return rid


def record(report: VerifyReport, environment: str, archive: str, installer: str = "") -> ReleaseRecord:
    """The release record of a verified appliance (release.json, state.json, txn.json)."""
    return ReleaseRecord(
        name=str(report.name),
        version=str(report.version),
        created=report.manifest.get("created"),
        environment=environment,
        metadata_versions={r: v["version"] for r, v in report.roles.items()},  # type: ignore[misc]
        installed=format_time(now()),
        installer=installer,
        archive=archive,
        targets_sha256=targets_sha256(report),
    )


# ---------------------------------------------------------------- trusted metadata


def metadata_to_keep(paths: Paths, trusted: dict[str, bytes], allow_downgrade: bool) -> dict[str, bytes]:
    """The metadata the host trusts after this operation.

    Normally python-tuf's trusted result: it never lowers a version, except in the TUF spec's
    recovery from a fast-forward attack (a rotated timestamp or snapshot key: the old files no longer
    verify, and the new, lower versions are accepted). With ``--allow-downgrade`` verification started
    from the root only, so the host keeps each file of its own with a higher version, as long as that
    file still verifies under the new root: a deliberate downgrade installs older software but never
    lowers what the host trusts.
    """
    if not allow_downgrade:
        return dict(trusted)
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root

    root = Metadata[Root].from_bytes(trusted["root.json"]).signed
    out = dict(trusted)
    for name, data in trusted.items():
        mine = paths.metadata / name
        if name == "root.json" or not mine.is_file():
            continue
        old = Metadata.from_bytes(mine.read_bytes())
        if old.signed.version <= Metadata.from_bytes(data).signed.version:
            continue
        try:
            root.verify_delegate(name.removesuffix(".json"), old.signed_bytes, old.signatures)
        except UnsignedMetadataError:
            continue  # signed by a key the new root no longer trusts: the spec's recovery
        out[name] = mine.read_bytes()
    return out


def stage_metadata(paths: Paths, rid: str, files: dict[str, bytes]) -> None:
    ensure_dir(paths.staging, PRIVATE_DIR)
    stage = ensure_dir(ensure_dir(paths.staging / rid, PRIVATE_DIR) / "metadata", PRIVATE_DIR)
    for name, data in files.items():
        with naming(stage / name, "cannot write"):
            (stage / name).write_bytes(data)


# ---------------------------------------------------------------- environment and space


def host_environment(archive: Path, envs: list[TargetEnvironment], lock: _lock.Lock) -> TargetEnvironment:
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


def check_space(
    paths: Paths, archive: Path, appliance: VerifiedAppliance, lock: _lock.Lock, env: TargetEnvironment
) -> None:
    """Refuse before writing anything when the prefix's filesystem cannot hold the new release."""
    wheel_bytes = sum(appliance.target(f"wheels/{a.filename}").length for a in lock.selection[env.name].values())
    tool = appliance.target(TOOL_TARGET).length
    need = space_needed(wheel_bytes, tool) + appliance.reader.size
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


# ---------------------------------------------------------------- the slot


def keep_appliance(appliance: VerifiedAppliance, dest: Path) -> None:
    """Copy the whole appliance through the descriptor it was verified from."""
    with naming(dest, "cannot write"):
        ok = copy_range(appliance.reader.fd, 0, appliance.reader.size, dest, None)
    if not ok:
        raise VerificationError([f"{appliance.path}: changed size after verification (the archive is being modified?)"])


def stage_wheels(
    appliance: VerifiedAppliance, lock: _lock.Lock, env: TargetEnvironment, stage: Path
) -> tuple[Path, Path]:
    wheels = ensure_dir(stage / "wheels", PRIVATE_DIR)
    for art in lock.selection[env.name].values():
        with naming(wheels / art.filename, "cannot write"):
            appliance.copy(f"wheels/{art.filename}", wheels / art.filename)
    req = stage / "requirements.txt"
    with naming(req, "cannot write"):
        req.write_bytes(appliance.read(f"lock/requirements-{env.name}.txt"))
    return wheels, req


def find_uv() -> _proc.Program | None:
    """uv as chiron runs it: the one bundled with chiron (a dependency), else one on PATH."""
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


def create_venv(venv: Path, wheels: Path, requirements: Path, choice: str) -> str:
    """Create the release environment offline from the staged wheels, hashes enforced."""
    python = _proc.Program("python", (_base_python(),))
    uv = find_uv() if choice in ("auto", "uv") else None
    if choice == "uv" and uv is None:
        raise EnvironmentProblem("--installer uv: uv was not found", hint="install uv or use --installer pip")
    common = ["--no-index", "--find-links", str(wheels), "--require-hashes", "-r", str(requirements)]
    if uv is not None:
        _proc.run(python, ["-m", "venv", "--without-pip", str(venv)], what="creating the release venv")
        env = dict(os.environ, UV_NO_CONFIG="1", UV_OFFLINE="1")
        env.pop("VIRTUAL_ENV", None)
        args = [
            "pip",
            "install",
            "--offline",
            "--no-cache",
            "--compile-bytecode",
            "--python",
            str(venv / "bin" / "python"),
        ]
        _proc.run(uv, [*args, *common], env=env, what="installing the wheelhouse with uv")
        return "uv"
    _proc.run(python, ["-m", "venv", str(venv)], what="creating the release venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    vpy = _proc.Program("pip", (str(venv / "bin" / "python"), "-m", "pip"))
    _proc.run(vpy, ["install", "--isolated", "--no-input", *common], env=env, what="installing the wheelhouse with pip")
    return "pip"


def tighten(root: Path) -> None:
    """Clear group/world write on everything under ``root``: uv creates its ``.lock`` mode 0666
    whatever the umask, and nothing in a release may be writable by another user."""
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)


def place_tool(appliance: VerifiedAppliance, dest: Path) -> None:
    """The installed tool: the archive's shebang and tool zip, re-hashed, without the payload."""
    ensure_dir(dest.parent, PUBLIC_DIR)
    with naming(dest, "cannot write"):
        appliance.copy(TOOL_TARGET, dest, prefix=appliance.layout.shebang)
    os.chmod(dest, 0o755)  # noqa: S103 - the tool is a program


def build_slot(
    paths: Paths,
    txn: Txn,
    appliance: VerifiedAppliance,
    lock: _lock.Lock,
    env: TargetEnvironment,
    installer: str,
) -> Txn:
    """Stage the wheels, create the venv, place the tool and keep the appliance in ``releases/<id>``;
    returns the transaction with the installer recorded."""
    slot = paths.release(txn.id)
    ensure_dir(paths.releases, PUBLIC_DIR)
    os.mkdir(slot, PUBLIC_DIR)
    os.chmod(slot, PUBLIC_DIR)
    wheels, requirements = stage_wheels(appliance, lock, env, paths.staging / txn.id)
    crash_point("staged")
    used = create_venv(slot / "venv", wheels, requirements, installer)
    tighten(slot / "venv")
    txn = txn.model_copy(update={"release": txn.release.model_copy(update={"installer": used})})
    write_model(paths.txn, txn)
    crash_point("venv")
    place_tool(appliance, slot / "bin" / "chiron")
    # The appliance itself stays with its release: the base that later deltas are rebuilt from.
    keep_appliance(appliance, slot / KEPT_APPLIANCE)
    write_model(slot / "release.json", txn.release, mode=0o644)
    crash_point("tool")
    return txn


def discard(paths: Paths, rid: str) -> None:
    """Remove a slot and its staging that never became live."""
    remove_tree(paths.release(rid))
    remove_tree(paths.staging / rid)


def signed_time(report: VerifyReport) -> datetime | None:
    return record(report, "", "").created_time()
