"""The air-gapped host: real installs into real venvs from appliances built here, upgrade scenarios,
rollback protection, a back-dated clock (faketime), tampered state, crashes at every step, a full
disk and concurrent operations."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiron.engines import host
from chiron.engines.build import BuildOptions, build
from chiron.errors import EnvironmentProblem, Refused, UsageError, VerificationError
from chiron.trust import metadata as _trust

from conftest import do_build
from helpers import ENV_311, ENV_312, LocalIndex, make_wheel, rewrite_archive, write_spec

NOW = int(time.time())
E = NOW - 3600


@dataclass(frozen=True)
class Appliances:
    keys: Path
    v1: Path
    v2: Path
    v3: Path
    rotated: Path
    expired: Path
    backdated: Path
    other_name: Path
    bad_hook: Path
    cp312_only: Path
    bloated: Path


@pytest.fixture(scope="session")
def apps(tmp_path_factory: pytest.TempPathFactory, keys: Path, tool_wheels: Path) -> Appliances:
    base = tmp_path_factory.mktemp("host-apps")
    wheels = base / "wheels"
    for v in ("1.0", "1.1", "1.2", "1.3"):
        make_wheel(wheels, "app", v, deps=("beta>=1",))
    make_wheel(wheels, "beta", "1.0")
    make_wheel(wheels, "gamma", "2.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    # 1 MiB compressed, ~200 MiB installed: passes the space estimate, then fills a small disk.
    make_wheel(wheels, "bloat", "1.0", payload=b"#" + b"0" * (200 << 20))
    index = LocalIndex(wheels)
    cache = base / "cache"

    def one(
        name: str,
        version: str,
        reqs: list[str],
        epoch: int,
        *,
        spec_keys: Path = keys,
        md_version: int | None = None,
        env: str = ENV_311,
        extra: str = "",
        app: str = "svc",
        ts: str = "1d",
    ) -> Path:
        spec = write_spec(
            base / name,
            keys=spec_keys,
            index_url=index.url,
            requirements=reqs,
            name=app,
            version=version,
            environments=env,
            extra=extra,
            timestamp_expires=ts,
        )
        if (spec_keys / "2.root.json").exists():
            spec.write_text(spec.read_text().replace(f'root = "{spec_keys}/1.root.json"', f'root = "{spec_keys}"'))
        out = base / f"{name}.pex"
        build(
            BuildOptions(
                spec=spec,
                output=out,
                tool_wheels=tool_wheels,
                cache_dir=cache,
                source_date_epoch=epoch,
                metadata_version=md_version,
                show_progress=False,
            )
        )
        return out

    rotated_keys = _rotated_keys(base / "rotated-keys", keys)
    try:
        return Appliances(
            keys=keys,
            v1=one("v1", "1.0.0", ["app==1.0"], E),
            v2=one("v2", "1.1.0", ["app==1.1"], E + 100),
            v3=one("v3", "1.2.0", ["app==1.2"], E + 200),
            rotated=one("rotated", "1.1.0", ["app==1.1"], E + 150, spec_keys=rotated_keys),
            expired=one("expired", "1.3.0", ["app==1.3"], NOW - 5 * 86400, md_version=E + 300),
            backdated=one("backdated", "1.3.0", ["app==1.3"], NOW - 3 * 86400, md_version=E + 400),
            other_name=one("other", "9.0.0", ["app==1.3"], E + 500, app="other"),
            bad_hook=one(
                "badhook",
                "1.3.0",
                ["app==1.3"],
                E + 600,
                extra='[host]\nhealth_check = ["sh", "-c", "echo app is sick >&2; exit 3"]\n',
            ),
            cp312_only=one("cp312", "1.3.0", ["gamma==2.0"], E + 700, env=ENV_312),
            bloated=one("bloated", "1.3.0", ["app==1.3", "bloat==1.0"], E + 800),
        )
    finally:
        index.close()


def _rotated_keys(directory: Path, keys: Path) -> Path:
    """A key directory whose root chain is v1 (the dev keys) then v2 with a NEW targets key, signed by
    the root key of v1 (threshold 1): hosts that trust v1 must follow the rotation."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey
    from tuf.api.metadata import Metadata, Root

    directory.mkdir(parents=True)
    for name in ("root.pem", "snapshot.pem", "timestamp.pem", "1.root.json"):
        shutil.copy(keys / name, directory / name)
    new = ed25519.Ed25519PrivateKey.generate()
    (directory / "targets.pem").write_bytes(
        new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    root = Metadata[Root].from_bytes((keys / "1.root.json").read_bytes())
    for keyid in list(root.signed.roles["targets"].keyids):
        root.signed.revoke_key(keyid, "targets")
    root.signed.add_key(SSlibKey.from_crypto(new.public_key()), "targets")
    root.signed.version = 2
    root.signatures.clear()
    root.sign(CryptoSigner(load_pem_private_key((keys / "root.pem").read_bytes(), None)))  # type: ignore[arg-type]
    (directory / "2.root.json").write_bytes(_trust.to_bytes(root))
    return directory


def _opts(archive: Path, prefix: Path, **kw) -> host.InstallOptions:  # type: ignore[no-untyped-def]
    return host.InstallOptions(archive=archive, prefix=prefix, **kw)


def _install(apps: Appliances, prefix: Path, archive: Path | None = None) -> host.HostResult:
    return host.install(_opts(archive or apps.v1, prefix, root_file=apps.keys / "1.root.json"))


def _app_version(prefix: Path) -> str:
    py = prefix / "current" / "venv" / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", "import app; print(app.__version__)"], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def _assert_consistent(prefix: Path) -> str:
    """The host is on ONE complete release: link, state and files agree; nothing half-written."""
    st = json.loads((prefix / "state" / "state.json").read_text())
    link = os.readlink(prefix / "current")
    assert link == f"releases/{st['current']}"
    rel = prefix / link
    assert (rel / "release.json").is_file() and (rel / "bin" / "chiron").is_file()
    assert not list((prefix / "releases").glob("*.partial"))
    assert not (prefix / "state" / "txn.json").exists()
    return _app_version(prefix)


def test_install_creates_a_working_release(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    result = _install(apps, prefix)
    assert result.installer == "uv" and result.environment == "cp311"
    assert _assert_consistent(prefix) == "1.0"
    assert os.readlink(prefix / "bin" / "chiron") == "../current/bin/chiron"
    info = host.status(prefix, None)
    assert info["current"]["name"] == "svc" and info["current"]["version"] == "1.0.0"
    assert info["metadata"]["timestamp"]["version"] == E
    assert info["last_operations"][-1]["op"] == "install" and info["last_operations"][-1]["result"] == "ok"
    with pytest.raises(Refused, match="already has release"):
        _install(apps, prefix)


def test_install_with_pip_fallback(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    result = host.install(_opts(apps.v1, prefix, root_file=apps.keys / "1.root.json", installer="pip"))
    assert result.installer == "pip"
    assert _assert_consistent(prefix) == "1.0"


SCENARIOS = [
    # (name, installed first, then upgrade to, expected app version after, expected error)
    ("v1 -> v2", ["v1"], "v2", "1.1", None),
    ("v1 -> v3 skipping v2", ["v1"], "v3", "1.2", None),
    ("v1 -> v2 across a targets-key rotation (root v2)", ["v1"], "rotated", "1.1", None),
    ("rotated -> v3 signed by the old targets key again", ["v1", "rotated"], "v3", None, VerificationError),
    ("rollback attempt v2 -> v1", ["v1", "v2"], "v1", "1.1", Refused),
    ("expired metadata", ["v1"], "expired", "1.0", VerificationError),
    ("another appliance", ["v1"], "other_name", "1.0", Refused),
    ("failing health hook", ["v1"], "bad_hook", "1.0", EnvironmentProblem),
    ("no environment for this host", ["v1"], "cp312_only", "1.0", EnvironmentProblem),
]


@pytest.mark.parametrize(("name", "before", "target", "version", "error"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_upgrade_scenarios(
    apps: Appliances,
    tmp_path: Path,
    name: str,
    before: list[str],
    target: str,
    version: str | None,
    error: type[Exception] | None,
) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix, getattr(apps, before[0]))
    for step in before[1:]:
        host.upgrade(_opts(getattr(apps, step), prefix))
    before_version = _app_version(prefix)
    if error is None:
        result = host.upgrade(_opts(getattr(apps, target), prefix))
        assert result.previous is not None
        assert _assert_consistent(prefix) == version
    else:
        with pytest.raises(error) as exc:
            host.upgrade(_opts(getattr(apps, target), prefix))
        assert "\n" not in exc.value.args[0]
        assert _assert_consistent(prefix) == (version or before_version)
        last = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
        assert last["result"] in ("refused", "failed") and last["op"] == "upgrade"


def test_downgrade_needs_the_flag_and_is_logged(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix, apps.v2)
    with pytest.raises(Refused) as exc:
        host.upgrade(_opts(apps.v1, prefix))
    assert exc.value.exit_code == 4 and "rollback refused" in exc.value.message
    result = host.upgrade(_opts(apps.v1, prefix, allow_downgrade=True))
    assert result.version == "1.0.0" and _assert_consistent(prefix) == "1.0"
    last = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
    assert last["op"] == "upgrade" and last["result"] == "ok" and last["allow_downgrade"] is True
    # The host still trusts the newer metadata: a plain upgrade to v1 again is a rollback.
    assert host.status(prefix, None)["metadata"]["timestamp"]["version"] == E + 100


def test_rollback_command(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    with pytest.raises(Refused, match="no previous release"):
        host.rollback(prefix, None)
    host.upgrade(_opts(apps.v2, prefix))
    result = host.rollback(prefix, None)
    assert result.version == "1.0.0" and _assert_consistent(prefix) == "1.0"
    assert host.rollback(prefix, None).version == "1.1.0"
    ops = [op["op"] for op in host.status(prefix, None)["last_operations"]]
    assert ops[-2:] == ["rollback", "rollback"]


def test_keeps_only_current_and_previous(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    host.upgrade(_opts(apps.v2, prefix))
    host.upgrade(_opts(apps.v3, prefix))
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == sorted(
        host.status(prefix, None)["releases"].keys()
    )
    assert len(list((prefix / "releases").iterdir())) == 2


def test_tampered_state_is_refused(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    ts = prefix / "state" / "metadata" / "timestamp.json"
    ts.write_bytes(ts.read_bytes().replace(b'"version": ', b'"version":  '))
    with pytest.raises(Refused, match=r"differs from the digest recorded in state\.json"):
        host.upgrade(_opts(apps.v2, prefix))
    assert _app_version(prefix) == "1.0"


def test_lost_state_is_refused(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix, apps.v2)
    shutil.rmtree(prefix / "state")
    # Re-installing the OLDER v1 would succeed if lost state were silently re-trusted.
    with pytest.raises(Refused, match="state lost or moved"):
        _install(apps, prefix, apps.v1)
    with pytest.raises(Refused, match="state lost or moved"):
        host.upgrade(_opts(apps.v1, prefix))
    assert _app_version(prefix) == "1.1"


def test_upgrade_needs_an_install(apps: Appliances, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nothing is installed"):
        host.upgrade(_opts(apps.v2, tmp_path / "empty"))


def _chiron(
    args: list[str], env: dict[str, str] | None = None, faketime: str | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from chiron.cli import main; main()", *args]
    if faketime:
        cmd = ["faketime", "-f", faketime, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime missing: .ci/run installs it")
def test_back_dated_clock_cannot_reopen_expired_metadata(apps: Appliances, tmp_path: Path) -> None:
    # Control: on a fresh host (no floor) with the clock 5 days back, the backdated archive is valid.
    fresh = _chiron(
        ["install", str(apps.backdated), "--prefix", str(tmp_path / "fresh"), "--root", str(apps.keys / "1.root.json")],
        faketime="-5d",
    )
    assert fresh.returncode == 0, fresh.stderr
    # A host that has seen the present keeps a time floor: the same clock trick is refused.
    prefix = tmp_path / "p"
    _install(apps, prefix)
    proc = _chiron(["upgrade", str(apps.backdated), "--prefix", str(prefix)], faketime="-5d")
    assert proc.returncode == 1, proc.stderr
    assert "behind the time floor" in proc.stderr and "expired" in proc.stderr
    assert _app_version(prefix) == "1.0"


@pytest.mark.parametrize("step", host.STEPS)
def test_crash_at_every_upgrade_step(apps: Appliances, tmp_path: Path, step: str) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    proc = _chiron(["upgrade", str(apps.v2), "--prefix", str(prefix)], env={"CHIRON_TEST_CRASH_AT": step})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    # Right after the kill the live release is complete: the old one, or (after the switch) the new one.
    live = _app_version(prefix)
    switched = host.STEPS.index(step) >= host.STEPS.index("switched")
    assert live == ("1.1" if switched else "1.0")
    # The next operation finishes or undoes the interrupted one, then does its own work.
    info = host.status(prefix, None)
    pending = step not in ("verified", "committed")  # no transaction yet / already closed
    assert (info["pending_transaction"] is not None) == pending
    host.upgrade(_opts(apps.v3, prefix))
    assert _assert_consistent(prefix) == "1.2"
    recovered = [op for op in host.status(prefix, None)["last_operations"] if op["op"] == "recover"]
    assert len(recovered) == (1 if pending else 0)


@pytest.mark.parametrize("step", ["verified", "venv", "health", "switched"])
def test_crash_during_first_install(apps: Appliances, tmp_path: Path, step: str) -> None:
    prefix = tmp_path / "p"
    args = ["install", str(apps.v1), "--prefix", str(prefix), "--root", str(apps.keys / "1.root.json")]
    proc = _chiron(args, env={"CHIRON_TEST_CRASH_AT": step})
    assert proc.returncode == -9
    if step == "switched":
        assert _app_version(prefix) == "1.0"
    else:
        assert not (prefix / "current").exists()
    proc = _chiron(["status", "--prefix", str(prefix), "--json"])
    if step == "switched":
        host.recover(host.Paths.make(prefix, None))
        assert _assert_consistent(prefix) == "1.0"
        assert os.readlink(prefix / "bin" / "chiron") == "../current/bin/chiron"
    else:
        proc = _chiron(args)
        assert proc.returncode == 0, proc.stderr
        assert _assert_consistent(prefix) == "1.0"


@pytest.fixture()
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=250m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}); CI runs as root and can")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_leaves_the_old_release_working(apps: Appliances, small_disk: Path) -> None:
    prefix = small_disk / "p"
    _install(apps, prefix)
    with pytest.raises(EnvironmentProblem) as exc:
        host.upgrade(_opts(apps.bloated, prefix))
    assert "No space left" in exc.value.message or "not enough free space" in exc.value.message
    assert _assert_consistent(prefix) == "1.0"
    last = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
    assert last["result"] == "failed" and last["stays_on"].startswith("svc-1.0.0")
    assert not list((prefix / "state" / "staging").iterdir())
    # After the failure the disk is free again, so a normal upgrade goes through.
    host.upgrade(_opts(apps.v2, prefix))
    assert _assert_consistent(prefix) == "1.1"


def test_space_is_checked_before_writing(apps: Appliances, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    try:
        with pytest.raises(EnvironmentProblem, match="not enough free space"):
            _install(apps, mnt / "p")
        assert not (mnt / "p" / "releases").exists() or not any((mnt / "p" / "releases").iterdir())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_concurrent_operations_wait_or_refuse(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            "os.pwrite(fd, b'pid 1, test holder', 0); print('held', flush=True); time.sleep(3)",
            str(prefix / "state" / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(Refused, match=r"another chiron operation holds .* test holder"):
        host.upgrade(_opts(apps.v2, prefix))
    result = host.upgrade(_opts(apps.v2, prefix, wait=30))
    holder.wait(timeout=30)
    assert result.version == "1.1.0"


def test_installed_tool_upgrades_and_refuses_foreign_archives(
    apps: Appliances,
    tmp_path: Path,
    other_keys: Path,
    index,
    tool_wheels: Path,  # type: ignore[no-untyped-def]
) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    tool = prefix / "bin" / "chiron"
    env = {**os.environ, "PEX_ROOT": str(tmp_path / "pex-root")}
    ok = subprocess.run(
        [str(tool), "upgrade", str(apps.v2), "--prefix", str(prefix), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["appliance"]["version"] == "1.1.0"
    # An archive signed by other keys verifies by its own (embedded) root, but the installed tool
    # checks it against the host's trusted root and refuses it.
    spec = write_spec(
        tmp_path / "foreign",
        keys=other_keys,
        index_url=index.url,
        requirements=["beta==1.0"],
        name="svc",
        version="2.0.0",
    )
    foreign = do_build(spec, tmp_path / "foreign.pex", tool_wheels, tmp_path / "cache").output
    bad = subprocess.run(
        [str(tool), "upgrade", str(foreign), "--prefix", str(prefix)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1, bad.stderr
    assert "signature check failed" in bad.stderr
    assert _app_version(prefix) == "1.1"


def test_status_json_and_expiry_warnings(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    proc = _chiron(["status", "--prefix", str(prefix), "--json"])
    assert proc.returncode == 0
    info = json.loads(proc.stdout)
    assert info["schema"] == "chiron.status/1" and info["current"]["version"] == "1.0.0"
    # 23 h of a 1-day timestamp are left: more than a quarter of its period, so no warning (issue 21;
    # a fixed 7-day window warned on every status of a host with a 1-day timestamp).
    assert not any("timestamp" in w for w in info["warnings"]), info["warnings"]
    assert [p["name"] for p in info["packages"]] == ["app", "beta"]
    assert info["root_fingerprint"] == hashlib.sha256((apps.keys / "1.root.json").read_bytes()).hexdigest()
    floor = datetime.strptime(info["time_floor"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(floor - datetime.now(UTC)) < timedelta(minutes=5)
    text = _chiron(["status", "--prefix", str(prefix)])
    assert "current: svc 1.0.0" in text.stdout and "install" in text.stdout


def _audit_cli(prefix: Path) -> subprocess.CompletedProcess[str]:
    return _chiron(["audit", "verify", "--prefix", str(prefix), "--json"])


def test_audit_log_chain_detects_edits_and_removals(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    host.upgrade(_opts(apps.v2, prefix))
    host.rollback(prefix, None)
    log = prefix / "state" / "audit.jsonl"
    good = log.read_bytes()
    ok = _audit_cli(prefix)
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["entries"] == 3
    lines = good.splitlines(keepends=True)
    cases = {
        "edited": lines[0].replace(b'"result": "ok"', b'"result": "failed"') + b"".join(lines[1:]),
        "middle removed": lines[0] + lines[2],
        "last removed": b"".join(lines[:-1]),
        "inserted": lines[0] + b'{"op": "install", "result": "ok"}\n' + b"".join(lines[1:]),
    }
    for what, data in cases.items():
        log.write_bytes(data)
        proc = _audit_cli(prefix)
        assert proc.returncode == 1, (what, proc.stdout)
        report = json.loads(proc.stdout)
        assert report["ok"] is False and report["problems"], what
    log.write_bytes(good)
    assert _audit_cli(prefix).returncode == 0


def test_upgrade_rerun_is_a_noop(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    first = host.upgrade(_opts(apps.v2, prefix))
    again = host.upgrade(_opts(apps.v2, prefix))
    assert again.release == first.release and again.previous == first.previous
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == sorted([first.release, first.previous or ""])
    assert host.status(prefix, None)["last_operations"][-1]["result"] == "noop"


def test_new_archive_hands_over_to_the_installed_tool(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    env = {**os.environ, "PEX_ROOT": str(tmp_path / "pex-root")}
    proc = subprocess.run([str(apps.v2), "upgrade", "--prefix", str(prefix)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"handing over to the installed tool {prefix / 'bin' / 'chiron'}" in proc.stderr
    assert _assert_consistent(prefix) == "1.1"


def test_recover_command(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    proc = _chiron(["upgrade", str(apps.v2), "--prefix", str(prefix)], env={"CHIRON_TEST_CRASH_AT": "venv"})
    assert proc.returncode == -9
    out = _chiron(["recover", "--prefix", str(prefix)])
    assert out.returncode == 0 and "undid interrupted upgrade" in out.stdout
    assert _assert_consistent(prefix) == "1.0"
    assert _chiron(["recover", "--prefix", str(prefix)]).stdout.strip() == "nothing to recover"


# ---------------------------------------------------------------- hostile hosts and damaged state (issue 13)


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """One chiron command in-process: (exit code, stdout, stderr)."""
    from chiron.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``root`` (not following links), but the lock file whose text names its holder."""
    seen: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            rel = str(path.relative_to(root))
            if rel == "state/lock" or rel.endswith("/state/lock"):
                continue
            st = path.lstat()
            link = os.readlink(path) if path.is_symlink() else None
            data = path.read_bytes() if path.is_file() and not link and st.st_size < 1 << 16 else None
            seen[rel] = (st.st_mode, st.st_size, st.st_mtime_ns, link, data)
    return seen


def _assert_one_line_refusal(code: int, err: str, expect_code: int, *fragments: str) -> None:
    assert code == expect_code, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("chiron: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def _txn_for(state: dict[str, object], rid: str = "svc-9.9.9-1") -> dict[str, object]:
    releases = state["releases"]
    assert isinstance(releases, dict)
    return {
        "op": "upgrade",
        "id": rid,
        "release": releases[state["current"]],
        "reference_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "keep_releases": 2,
    }


def _bad_release_version(state: dict) -> dict:  # type: ignore[type-arg]
    rid = state["current"]
    return {**state, "releases": {**state["releases"], rid: {**state["releases"][rid], "version": 1}}}


DAMAGED = [
    # (case, file, new content (bytes, or a function of the file's JSON, or "fifo"), what the error names)
    ("state.json holds a list", "state.json", b"[]", "the top level"),
    ("state.json is an empty object", "state.json", b"{}", "field 'schema'"),
    ("state.json is not JSON", "state.json", b'{"current": ', "is not valid JSON"),
    ("state.json current of the wrong type", "state.json", lambda s: {**s, "current": 5}, "field 'current'"),
    ("state.json current outside releases/", "state.json", lambda s: {**s, "current": "../../x"}, "field 'current'"),
    ("state.json current not a release", "state.json", lambda s: {**s, "current": "svc-0-1"}, "is not in releases"),
    ("state.json release field of the wrong type", "state.json", _bad_release_version, "field 'releases.svc-1.1.0-"),
    ("state.json unknown field", "state.json", lambda s: {**s, "extra": 1}, "field 'extra'"),
    ("state.json is a FIFO", "state.json", "fifo", "is not a regular file"),
    ("txn.json is an empty object", "txn.json", b"{}", "field 'op'"),
    ("txn.json holds a list", "txn.json", b"[1]", "the top level"),
    ("txn.json unknown op", "txn.json", lambda t: {**t, "op": "explode"}, "field 'op'"),
    ("txn.json absolute release id", "txn.json", lambda t: {**t, "id": "VICTIM"}, "field 'id'"),
    ("txn.json '..' as release id", "txn.json", lambda t: {**t, "id": ".."}, "field 'id'"),
    ("txn.json keep_releases as text", "txn.json", lambda t: {**t, "keep_releases": "2"}, "field 'keep_releases'"),
    ("floor.json holds a list", "floor.json", b"[]", "the top level"),
    ("floor.json time is not a time", "floor.json", lambda f: {"floor": "yesterday"}, "field 'floor'"),
]


def test_damaged_state_is_one_line_refusal_and_changes_nothing(
    apps: Appliances, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chiron.engines.doctor import doctor

    prefix = tmp_path / "p"
    _install(apps, prefix)
    host.upgrade(_opts(apps.v2, prefix))
    state_dir = prefix / "state"
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("not chiron's")
    st = json.loads((state_dir / "state.json").read_text())
    originals = {name: (state_dir / name).read_bytes() for name in ("state.json", "floor.json")}
    bases: dict[str, object] = {**{n: json.loads(b) for n, b in originals.items()}, "txn.json": _txn_for(st)}
    commands = [
        ["status", "--prefix", str(prefix)],
        ["upgrade", str(apps.v3), "--prefix", str(prefix)],
        ["rollback", "--prefix", str(prefix)],
        ["recover", "--prefix", str(prefix)],
        ["inventory", "--prefix", str(prefix)],
        ["install", str(apps.v1), "--prefix", str(prefix), "--root", str(apps.keys / "1.root.json")],
    ]
    for case, name, content, names in DAMAGED:
        target = state_dir / name
        if content == "fifo":
            target.unlink()
            os.mkfifo(target)
        elif callable(content):
            text = json.dumps(content(bases[name])).replace("VICTIM", str(victim))
            target.write_text(text)
        else:
            assert isinstance(content, bytes)
            target.write_bytes(content)
        before = _tree(prefix)
        for args in commands:
            code, _out, err = _cli(args, capsys)
            _assert_one_line_refusal(code, err, 4, str(target), names, "state damaged: restore the state directory")
            assert _tree(prefix) == before, (case, args[0])
        check = {c.name: c for c in doctor(None, prefix, None)}["state integrity"]
        assert not check.ok and str(target) in check.detail, (case, check)
        assert (victim / "sub" / "keep.txt").read_text() == "not chiron's", case
        target.unlink()
        if name in originals:
            target.write_bytes(originals[name])
    assert _assert_consistent(prefix) == "1.1"


def test_state_files_stay_byte_compatible(apps: Appliances, tmp_path: Path) -> None:
    """The typed models read what earlier chiron wrote and write the same bytes (sorted keys, indent 2)."""
    from chiron.core.hoststate import Floor, HostState, ReleaseRecord, Txn, dump, parse_model

    release = {
        "archive": "/srv/appliances/v1.pex",
        "created": "2025-01-02T03:04:05Z",
        "environment": "cp311",
        "installed": "2025-01-02T04:00:00Z",
        "installer": "uv",
        "metadata_versions": {"root": 1, "snapshot": 1735787045, "targets": 1735787045, "timestamp": 1735787045},
        "name": "svc",
        "targets_sha256": "ab" * 32,
        "version": "1.0.0",
    }
    files = {
        HostState: {
            "schema": "chiron.host-state/1",
            "current": "svc-1.0.0-1735787045",
            "previous": None,
            "releases": {"svc-1.0.0-1735787045": release},
            "metadata_digests": {f"{r}.json": "cd" * 32 for r in ("root", "timestamp", "snapshot", "targets")},
        },
        Txn: {
            "op": "upgrade",
            "id": "svc-1.0.0-1735787045.2",
            "release": {**release, "installer": ""},
            "reference_time": "2025-01-02T04:00:00Z",
            "keep_releases": 2,
        },
        Floor: {"floor": "2025-01-02T04:00:00Z"},
        ReleaseRecord: release,
    }
    for model, data in files.items():
        legacy = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()  # what chiron always wrote
        assert dump(parse_model(model, legacy, tmp_path / "f.json")) == legacy, model
    # And what this chiron writes on a real host reads back to the same bytes.
    prefix = tmp_path / "p"
    _install(apps, prefix)
    for path, model in ((prefix / "state" / "state.json", HostState), (prefix / "state" / "floor.json", Floor)):
        raw = path.read_bytes()
        assert dump(parse_model(model, raw, path)) == raw
        assert raw == (json.dumps(json.loads(raw), indent=2, sort_keys=True) + "\n").encode()
    rel = next((prefix / "releases").iterdir()) / "release.json"
    assert set(json.loads(rel.read_text())) == set(release)


def test_absolute_release_id_in_txn_is_never_deleted(apps: Appliances, tmp_path: Path) -> None:
    from chiron.errors import HostStateError

    prefix = tmp_path / "p"
    _install(apps, prefix)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    st = json.loads((prefix / "state" / "state.json").read_text())
    for rid in (str(victim), "../../victim", "releases/../../victim"):
        (prefix / "state" / "txn.json").write_text(json.dumps(_txn_for(st, rid)))
        with pytest.raises(HostStateError, match="field 'id'"):
            host.recover_only(prefix, None)
        assert (victim / "keep.txt").is_file()
    (prefix / "state" / "txn.json").unlink()


def _symlink_releases(prefix: Path, tmp_path: Path) -> Path:
    real = tmp_path / "elsewhere"
    shutil.move(prefix / "releases", real)
    (prefix / "releases").symlink_to(real)
    return real


def _symlink_staging(prefix: Path, tmp_path: Path) -> Path:
    real = tmp_path / "elsewhere"
    real.mkdir()
    shutil.rmtree(prefix / "state" / "staging", ignore_errors=True)
    (prefix / "state" / "staging").symlink_to(real)
    return real


@pytest.mark.parametrize(
    ("where", "make"),
    [("PREFIX/releases", _symlink_releases), ("state/staging", _symlink_staging)],
    ids=["releases", "staging"],
)
def test_symlinked_directories_are_never_followed_when_deleting(
    apps: Appliances, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, make: object
) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    assert callable(make)
    target = make(prefix, tmp_path)
    (target / "data-1" / "deep").mkdir(parents=True)
    (target / "data-1" / "deep" / "keep.txt").write_text("precious")
    before = _tree(tmp_path / "elsewhere")
    for args in (
        ["recover", "--prefix", str(prefix)],
        ["upgrade", str(apps.v2), "--prefix", str(prefix)],
        ["rollback", "--prefix", str(prefix)],
    ):
        code, _out, err = _cli(args, capsys)
        _assert_one_line_refusal(code, err, 4, "is a symlink", "never follows a symlink")
        assert _tree(tmp_path / "elsewhere") == before, args[0]
    assert (target / "data-1" / "deep" / "keep.txt").read_text() == "precious"


def test_a_symlinked_release_slot_is_unlinked_not_followed(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    victim = tmp_path / "victim"
    (victim / "venv").mkdir(parents=True)
    (victim / "venv" / "keep.txt").write_text("x")
    (prefix / "releases" / "svc-0.1-1").symlink_to(victim)
    assert host.recover_only(prefix, None) is None
    assert not (prefix / "releases" / "svc-0.1-1").is_symlink() and (victim / "venv" / "keep.txt").is_file()


PERMISSIONS = [
    # (case, directory under the prefix, how it is loosened, what the refusal says)
    ("prefix world-writable", ".", lambda p: os.chmod(p, 0o777), "mode 0777"),
    ("state world-writable", "state", lambda p: os.chmod(p, 0o777), "mode 0777"),
    ("state group-writable", "state", lambda p: os.chmod(p, 0o770), "mode 0770"),
    ("releases world-writable", "releases", lambda p: os.chmod(p, 0o757), "mode 0757"),
    ("bin group-writable", "bin", lambda p: os.chmod(p, 0o775), "mode 0775"),
    ("state owned by another user", "state", lambda p: os.chown(p, 65534, 65534), "owned by uid 65534"),
]


def test_loose_directories_are_refused(apps: Appliances, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    for case, sub, loosen, says in PERMISSIONS:
        path = (prefix / sub).resolve()
        st = path.stat()
        if "owned" in case and os.geteuid() != 0:
            continue  # only root can give a directory away; CI runs as root
        loosen(path)
        before = _tree(prefix)
        for args in (["upgrade", str(apps.v2), "--prefix", str(prefix)], ["rollback", "--prefix", str(prefix)]):
            code, _out, err = _cli(args, capsys)
            _assert_one_line_refusal(code, err, 4, f"{path}: ", says)
            assert "chmod go-w" in err or "chown" in err, (case, err)
            assert _tree(prefix) == before, case
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.chown(path, st.st_uid, st.st_gid)
    assert _assert_consistent(prefix) == "1.0"


def test_modes_do_not_depend_on_the_umask(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    old = os.umask(0)
    try:
        result = _install(apps, prefix)
    finally:
        os.umask(old)
    slot = prefix / "releases" / result.release
    expected = {prefix: 0o755, prefix / "bin": 0o755, prefix / "releases": 0o755, slot: 0o755,
                slot / "bin": 0o755, prefix / "state": 0o700, prefix / "state" / "metadata": 0o700}  # fmt: skip
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in expected} == expected
    loose = [str(p) for p in (prefix, *prefix.rglob("*")) if not p.is_symlink() and p.stat().st_mode & 0o022]
    assert not loose, loose[:5]


def test_fifo_and_missing_inputs_never_hang_or_hold_the_lock(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    fifo = tmp_path / "new.pex"
    os.mkfifo(fifo)
    fresh = tmp_path / "fresh"
    cases = [
        (["upgrade", str(fifo), "--prefix", str(prefix)], "not a regular file"),
        (["doctor", str(fifo), "--prefix", str(prefix)], "not a regular file"),
        (["install", str(fifo), "--prefix", str(fresh), "--root", str(apps.keys / "1.root.json")], "not a regular"),
        (["upgrade", str(tmp_path / "missing.pex"), "--prefix", str(prefix)], "no such file"),
        (["install", str(tmp_path / "missing.pex"), "--prefix", str(fresh)], "no such file"),
        (["install", str(apps.v1), "--prefix", str(fresh), "--root", str(tmp_path / "no-root.json")], "no such file"),
    ]
    for args, says in cases:
        proc = _chiron(args, timeout=120)  # a hang fails here instead of blocking the suite
        assert proc.returncode == 2, (args, proc.stderr)
        assert says in proc.stdout + proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert not fresh.exists(), args  # nothing created for an input that is not there
    # The lock was never held: an operation that does not wait gets it at once.
    assert host.recover_only(prefix, None, wait=0) is None


def _lock_is_a_directory(prefix: Path) -> Path:
    (prefix / "state" / "lock").unlink()
    (prefix / "state" / "lock").mkdir()
    return prefix / "state" / "lock"


def _metadata_is_a_symlink(prefix: Path) -> Path:
    md = prefix / "state" / "metadata" / "root.json"
    shutil.move(md, prefix.parent / "root.json")
    md.symlink_to(prefix.parent / "root.json")
    return md


def _current_outside_releases(prefix: Path) -> Path:
    outside = prefix.parent / "elsewhere"
    shutil.copytree(prefix / os.readlink(prefix / "current"), outside, symlinks=True)
    (prefix / "current").unlink()
    (prefix / "current").symlink_to(outside)
    return prefix / "current"


def _audit_log_is_a_fifo(prefix: Path) -> Path:
    log = prefix / "state" / "audit.jsonl"
    log.unlink()
    os.mkfifo(log)
    return log


DAMAGED_LAYOUT = [
    # (case, damage (returns the path the refusal names), commands that must refuse with exit 4)
    ("the lock is a directory", _lock_is_a_directory, ["upgrade", "rollback", "recover"]),
    ("a trusted metadata file is a symlink", _metadata_is_a_symlink, ["upgrade", "rollback", "status", "inventory"]),
    ("current points outside releases/", _current_outside_releases, ["upgrade", "rollback", "recover", "status"]),
    ("the audit log is a FIFO", _audit_log_is_a_fifo, ["audit"]),
]


@pytest.mark.parametrize(("case", "damage", "commands"), DAMAGED_LAYOUT, ids=[d[0] for d in DAMAGED_LAYOUT])
def test_damaged_host_layout_is_refused(
    apps: Appliances, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, damage: object, commands: list[str]
) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    assert callable(damage)
    named = damage(prefix)
    argv = {
        "upgrade": ["upgrade", str(apps.v2), "--prefix", str(prefix)],
        "rollback": ["rollback", "--prefix", str(prefix)],
        "recover": ["recover", "--prefix", str(prefix)],
        "status": ["status", "--prefix", str(prefix)],
        "inventory": ["inventory", "--prefix", str(prefix)],
        "audit": ["audit", "verify", "--prefix", str(prefix)],
    }
    before = _tree(tmp_path)
    for command in commands:
        code, _out, err = _cli(argv[command], capsys)
        _assert_one_line_refusal(code, err, 4, str(named))
        assert _tree(tmp_path) == before, (case, command)


def test_full_state_disk_names_the_file(apps: Appliances, tmp_path: Path) -> None:
    mnt = tmp_path / "state-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}); CI runs as root and can")
    try:
        prefix, state = tmp_path / "p", mnt / "state"
        host.install(_opts(apps.v1, prefix, state_dir=state, root_file=apps.keys / "1.root.json"))
        host.upgrade(_opts(apps.v2, prefix, state_dir=state))
        with (mnt / "filler").open("wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        proc = _chiron(["rollback", "--prefix", str(prefix), "--state-dir", str(state)])
        assert proc.returncode == 3, proc.stderr
        assert f"chiron: error: {state}/" in proc.stderr and "No space left on device" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---------------------------------------------------------------- restoring a state backup (issue 21, item 1)


def _backup(prefix: Path, to: Path) -> Path:
    """The runbook's backup command, as written there (docs/runbooks/install-and-upgrade.md section 2)."""
    subprocess.run(["sh", "-c", f"umask 077 && tar -C {prefix} -czf {to} state"], check=True)
    return to


def _restore(prefix: Path, backup: Path) -> None:
    """The runbook's restore (section 7): the state directory replaced by the backup."""
    shutil.rmtree(prefix / "state")
    subprocess.run(["tar", "-C", str(prefix), "-xzf", str(backup)], check=True)


RESTORES = [
    # (case, what happens between the backup and the restore, the live version after, previous after)
    ("upgraded after the backup", "upgrade", "1.1", "1.0.0"),
    ("rolled back after the backup", "rollback", "1.0", "1.1.0"),
]


@pytest.mark.parametrize(("case", "after", "live", "previous"), RESTORES, ids=[r[0] for r in RESTORES])
def test_restoring_an_older_state_backup_keeps_the_live_release(
    apps: Appliances,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    after: str,
    live: str,
    previous: str,
) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    if after == "rollback":
        host.upgrade(_opts(apps.v2, prefix))
    backup = _backup(prefix, tmp_path / "state.tgz")
    assert stat.S_IMODE(backup.stat().st_mode) & 0o077 == 0  # the backup holds the trust state: private
    if after == "upgrade":
        host.upgrade(_opts(apps.v2, prefix))
    else:
        host.rollback(prefix, None)
    live_before = os.readlink(prefix / "current")
    _restore(prefix, backup)

    # Every routine command refuses, naming the disagreement and the repair; nothing is deleted.
    before = _tree(prefix)
    for args in (
        ["status", "--prefix", str(prefix)],
        ["upgrade", str(apps.v1), "--prefix", str(prefix)],
        ["upgrade", str(apps.v2), "--prefix", str(prefix)],
        ["rollback", "--prefix", str(prefix)],
    ):
        code, _out, err = _cli(args, capsys)
        _assert_one_line_refusal(code, err, 4, "the state disagrees with the disk", f"chiron recover --prefix {prefix}")
        assert _tree(prefix) == before, args
    assert _app_version(prefix) == live and os.readlink(prefix / "current") == live_before
    from chiron.engines.doctor import doctor

    check = {c.name: c for c in doctor(None, prefix, None)}["state integrity"]
    assert not check.ok and "disagrees" in check.detail and "chiron recover" in check.fix
    code, out, _err = _cli(["audit", "verify", "--prefix", str(prefix), "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and any("were lost" in p and "restored from a backup" in p for p in report["problems"]), report

    # recover adopts the live release (verified against the trusted metadata when state did not know it).
    code, out, err = _cli(["recover", "--prefix", str(prefix)], capsys)
    assert code == 0 and "adopted the live release" in out, err
    info = host.status(prefix, None)
    assert _assert_consistent(prefix) == live
    assert info["releases"][info["previous"]]["version"] == previous
    entry = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["op"] == "recover" and entry["adopted"] is True and entry["lost_entries"]["through"] > 1
    code, out, _err = _cli(["audit", "verify", "--prefix", str(prefix), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and any("were lost before entry" in n for n in report["notices"]), report
    # rollback works after the adoption, and back again.
    assert host.rollback(prefix, None).version == previous
    assert host.rollback(prefix, None).previous is not None and _app_version(prefix) == live


def test_adoption_refuses_a_live_release_that_does_not_verify(
    apps: Appliances, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    backup = _backup(prefix, tmp_path / "state.tgz")
    new = host.upgrade(_opts(apps.v2, prefix)).release
    _restore(prefix, backup)
    kept = prefix / "releases" / new / "appliance"
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit inside the payload
    kept.write_bytes(bytes(data))
    before = _tree(prefix / "releases")
    code, _out, err = _cli(["recover", "--prefix", str(prefix)], capsys)
    _assert_one_line_refusal(code, err, 4, f"cannot adopt releases/{new}", "does not verify")
    assert _tree(prefix / "releases") == before and _app_version(prefix) == "1.1"
    assert json.loads((prefix / "state" / "state.json").read_text())["current"] != new


# ---------------------------------------------------------------- TUF fast-forward recovery (issue 13, item 16)


def _pem(path: Path) -> Path:
    """A new Ed25519 key: the private PEM at ``path``, the public one beside it (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub = path.with_suffix(".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pub


def _fast_forward_timestamp(archive: Path, key: Path, version: int, out: Path) -> Path:
    """The archive with its timestamp re-signed at ``version``: what a stolen timestamp key allows."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, Timestamp

    from chiron.archive.reader import ArchiveReader

    with ArchiveReader(archive) as reader:
        ts = Metadata[Timestamp].from_bytes(reader.read("metadata/timestamp.json"))
    ts.signed.version = version
    ts.signatures.clear()
    ts.sign(CryptoSigner(load_pem_private_key(key.read_bytes(), None)))  # type: ignore[arg-type]
    return rewrite_archive(archive, out, replace={"metadata/timestamp.json": _trust.to_bytes(ts)})


def test_timestamp_key_rotation_recovers_from_a_fast_forward_attack(
    keys: Path, index, tool_wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    shutil.copy(keys / "1.root.json", root_dir / "1.root.json")

    def build(version: str, epoch: int, timestamp_key: Path, name: str) -> Path:
        spec = write_spec(tmp_path / name, keys=keys, index_url=index.url, requirements=["beta==1.0"],
                          name="svc", version=version)  # fmt: skip
        text = spec.read_text().replace(f'root = "{keys}/1.root.json"', f'root = "{root_dir}"')
        spec.write_text(text.replace(f"file2:{keys}/timestamp.pem", f"file2:{timestamp_key}"))
        return do_build(spec, tmp_path / f"{name}.pex", tool_wheels, tmp_path / "cache", epoch=epoch).output

    v1 = build("1.0.0", E, keys / "timestamp.pem", "v1")
    v2 = build("1.1.0", E + 100, keys / "timestamp.pem", "v2")
    # The attacker's timestamp: version far ahead, signed with the (stolen) timestamp key.
    forward = E + 10**9
    attacked = _fast_forward_timestamp(v2, keys / "timestamp.pem", forward, tmp_path / "attacked.pex")
    prefix = tmp_path / "p"
    host.install(host.InstallOptions(archive=v1, prefix=prefix, root_file=keys / "1.root.json"))
    host.upgrade(host.InstallOptions(archive=attacked, prefix=prefix))
    assert host.status(prefix, None)["metadata"]["timestamp"]["version"] == forward
    # Recovery (TUF spec 5.3.11): rotate the timestamp key; the new timestamps start lower again.
    new_key = tmp_path / "timestamp2.pem"
    public = _pem(new_key)
    old_id = json.loads((keys / "1.root.json").read_text())["signed"]["roles"]["timestamp"]["keyids"][0]
    rotate = ["keys", "rotate", "timestamp", "--root-dir", str(root_dir), "--add", str(public), "--revoke", old_id]
    assert _cli(rotate, capsys)[0] == 0
    assert _cli(["sign", str(root_dir / "2.root.json"), "--key", f"file2:{keys / 'root.pem'}"], capsys)[0] == 0
    v3 = build("1.2.0", E + 200, new_key, "v3")
    result = host.upgrade(host.InstallOptions(archive=v3, prefix=prefix))
    assert result.version == "1.2.0"
    info = host.status(prefix, None)
    assert info["metadata"]["root"]["version"] == 2
    assert info["metadata"]["timestamp"]["version"] == E + 200  # the new, lower version is what is trusted
    # The next ordinary upgrade works, and the attacker's timestamp (old key) is refused for good.
    v4 = build("1.3.0", E + 300, new_key, "v4")
    assert host.upgrade(host.InstallOptions(archive=v4, prefix=prefix)).version == "1.3.0"
    replay = _fast_forward_timestamp(v4, keys / "timestamp.pem", forward + 1, tmp_path / "replay.pex")
    with pytest.raises(VerificationError, match="signature check failed"):
        host.upgrade(host.InstallOptions(archive=replay, prefix=prefix))
    assert host.status(prefix, None)["metadata"]["timestamp"]["version"] == E + 300


# ---------------------------------------------------------------- status: packages, expiry, signed time (issue 21)


def test_expiry_warning_is_relative_to_each_roles_period() -> None:
    from chiron.engines.host.status import expiry_warning

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    day, year = timedelta(days=1), timedelta(days=365)
    cases = [
        # (role, issued, period, time into the period, warns)
        ("timestamp", t0, day, timedelta(hours=1), False),
        ("timestamp", t0, day, timedelta(hours=17), False),
        ("timestamp", t0, day, timedelta(hours=19), True),
        ("snapshot", t0, 7 * day, 6 * day, True),
        ("targets", t0, 30 * day, 20 * day, False),
        ("root", t0, year, 200 * day, False),
        ("root", t0, year, 280 * day, True),
        ("timestamp", None, day, timedelta(hours=1), True),  # period unknown: the 7-day fallback
        ("timestamp", t0, day, day + timedelta(seconds=1), True),  # expired
    ]
    for role, issued, period, into, warns in cases:
        message = expiry_warning(role, t0 + period, issued, t0 + into)
        assert (message is not None) == warns, (role, period, into, message)
        if message:
            assert role in message and ("expired" in message or "left" in message)


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime missing: .ci/run installs it")
def test_status_warns_late_in_the_timestamps_period(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix)
    late = _chiron(["status", "--prefix", str(prefix), "--json"], faketime="+20h")  # 3 h of 24 left
    assert late.returncode == 0, late.stderr
    warnings = json.loads(late.stdout)["warnings"]
    assert any("trusted timestamp metadata expires" in w and "validity" in w for w in warnings), warnings
    text = _chiron(["status", "--prefix", str(prefix), "--packages"])
    assert "  app 1.0" in text.stdout and "root fingerprint: " in text.stdout, text.stdout


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime missing: .ci/run installs it")
def test_a_signed_time_ahead_of_the_clock_is_reported(apps: Appliances, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    args = ["install", str(apps.v1), "--prefix", str(prefix), "--root", str(apps.keys / "1.root.json")]
    proc = _chiron(args, faketime="-3d")  # the appliance was signed (E = now - 1 h) ~3 days "ahead"
    assert proc.returncode == 0, proc.stderr
    assert "ahead of this host's clock" in proc.stderr and "the time floor moves to it" in proc.stderr
    entry = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
    created = json.loads((prefix / "state" / "state.json").read_text())
    assert entry["signed_ahead_of_clock"] == created["releases"][entry["release"]]["created"]
    ok = _chiron(["install", str(apps.v1), "--prefix", str(tmp_path / "q"), "--root", str(apps.keys / "1.root.json")])
    assert ok.returncode == 0 and "ahead of this host's clock" not in ok.stderr


def test_images_command_reads_the_kept_appliance_checked(
    apps: Appliances, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "p"
    rid = _install(apps, prefix).release
    code, out, err = _cli(["images", "load", "--prefix", str(prefix), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == {
        "schema": "chiron.images/1",
        "op": "load",
        "release": rid,
        "registry": None,
        "images": [],
        "message": f"release {rid} carries no container images",
    }
    kept = prefix / "releases" / rid / "appliance"
    from chiron.archive.reader import read_layout

    member = read_layout(kept).member("metadata/targets.json")
    assert member is not None
    data = bytearray(kept.read_bytes())
    data[member.offset + member.length // 2] ^= 1
    kept.write_bytes(bytes(data))
    code, _out, err = _cli(["images", "load", "--prefix", str(prefix)], capsys)
    _assert_one_line_refusal(code, err, 1, "is not the one verified when release")
    code, _out, err = _cli(["images", "push", "--prefix", str(tmp_path / "empty"), "--registry", "127.0.0.1:1"], capsys)
    _assert_one_line_refusal(code, err, 2, "nothing is installed")
    assert not (tmp_path / "empty").exists()


@pytest.fixture(scope="module")
def engine_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-layer busybox image in the real Docker Engine, for the appliance the images tests ship."""
    docker = pytest.importorskip("docker")
    try:
        docker.from_env(timeout=30).ping()
    except Exception as exc:
        pytest.skip(f"NO DOCKER ENGINE ({type(exc).__name__}): .ci/run starts dockerd --bridge=none")
    if shutil.which("skopeo") is None:
        pytest.skip("NO SKOPEO: .ci/run installs it")
    rootfs = tmp_path_factory.mktemp("host-image") / "rootfs.tar"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([str(repo / "images" / "busybox" / "rootfs.sh"), str(rootfs)], check=True)
    ref = "chiron-test/host-images:1"
    subprocess.run(["docker", "import", str(rootfs), ref], check=True, capture_output=True)
    return ref


def test_images_of_the_installed_release_load_and_push(
    engine_image: str, keys: Path, index, tool_wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    extra = f'[[images]]\nref = "{engine_image}"\nsource = "docker"\n'
    spec = write_spec(tmp_path / "s", keys=keys, index_url=index.url, requirements=["beta==1.0"], extra=extra)
    archive = do_build(spec, tmp_path / "img.pex", tool_wheels, tmp_path / "cache").output
    prefix = tmp_path / "p"
    result = host.install(host.InstallOptions(archive=archive, prefix=prefix, root_file=keys / "1.root.json",
                                              images="skip"))  # fmt: skip
    assert any("left in the appliance" in n for n in result.notices)
    subprocess.run(["docker", "rmi", "-f", engine_image], check=True, capture_output=True)
    code, out, err = _cli(["images", "load", "--prefix", str(prefix), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == [engine_image]
    subprocess.run(["docker", "image", "inspect", engine_image], check=True, capture_output=True)
    entry = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
    assert (entry["op"], entry["result"], entry["images"]) == ("images-load", "ok", [engine_image])
    if shutil.which("docker-registry") is None:
        pytest.skip("NO docker-registry: .ci/run installs the docker-registry package (push not tested)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")  # fmt: skip
    registry = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(50):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        code, out, err = _cli(["images", "push", "--prefix", str(prefix), "--registry", f"127.0.0.1:{port}",
                               "--json"], capsys)  # fmt: skip
        assert code == 0, err
        (pushed,) = json.loads(out)["images"]
        assert pushed.startswith(f"127.0.0.1:{port}/")
        subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{pushed}"], check=True,
                       capture_output=True)  # fmt: skip
    finally:
        registry.terminate()
        registry.wait(timeout=10)
