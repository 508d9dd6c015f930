"""The air-gapped host: real installs into real venvs from appliances built here, upgrade scenarios,
rollback protection, a back-dated clock (faketime), tampered state, crashes at every step, a full
disk and concurrent operations."""

from __future__ import annotations

import json
import os
import shutil
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
from helpers import ENV_311, ENV_312, LocalIndex, make_wheel, write_spec

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
                allow_expired=True,  # the expired and back-dated releases are expired on purpose
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
    assert any("timestamp" in w for w in info["warnings"])  # a 1-day timestamp expires within 7 days
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
