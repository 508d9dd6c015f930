"""Bringing a release into service (issue 19) against the real Docker Engine and Debian's Compose CLI:
an application shipped as a busybox image plus a Compose file serves HTTP on 127.0.0.1 (the engine has
no bridge network: host networking); a live check proves each release; a failing one, a hook that
hangs, or a chiron killed during the trial reverts to the last good release by itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiron.engines import host
from chiron.engines.build import BuildOptions, build
from chiron.errors import EnvironmentProblem, Refused, SpecError

from helpers import ENV_311, LocalIndex, make_wheel, write_spec

REPO = Path(__file__).resolve().parents[2]
IMAGE = "chiron-test/act:1"
PROJECT = "chiron-act"
E = int(time.time()) - 3600


@dataclass(frozen=True)
class Apps:
    keys: Path
    port: int
    marks: Path  # where the hooks leave their marks
    image_id: str
    v1: Path
    v2: Path
    v3: Path  # its service never answers /health: fails its live check
    hang: Path  # post_switch hangs past its timeout
    pre_fail: Path  # pre_switch fails


def _compose_cli() -> list[str]:
    from chiron.engines.host.activation import find_compose

    cli = find_compose()
    if cli is None:
        pytest.skip("NO COMPOSE CLI: .ci/run installs Debian's docker-compose")
    return cli


@pytest.fixture(scope="module")
def act_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image (images/busybox) in the real Engine; its ID is what every service must run."""
    docker = pytest.importorskip("docker")
    try:
        docker.from_env(timeout=30).ping()
    except Exception as exc:
        pytest.skip(f"NO DOCKER ENGINE ({type(exc).__name__}): .ci/run starts dockerd --bridge=none")
    _compose_cli()
    rootfs = tmp_path_factory.mktemp("act-image") / "rootfs.tar"
    subprocess.run([str(REPO / "images" / "busybox" / "rootfs.sh"), str(rootfs)], check=True)
    subprocess.run(["docker", "import", str(rootfs), IMAGE], check=True, capture_output=True)
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", IMAGE], capture_output=True, text=True)
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _compose_yaml(version: str, port: int, healthy: bool = True) -> str:
    health = "echo ok > /tmp/www/health && " if healthy else ""
    return f"""
services:
  web:
    image: {IMAGE}
    network_mode: host
    stop_signal: SIGKILL
    command:
      - sh
      - -c
      - busybox mkdir -p /tmp/www && echo {version} > /tmp/www/version && {health}exec busybox httpd -f -p 127.0.0.1:{port} -h /tmp/www
"""


@pytest.fixture(scope="module")
def apps(act_image: str, tmp_path_factory: pytest.TempPathFactory, keys: Path, tool_wheels: Path) -> Apps:
    base = tmp_path_factory.mktemp("act-apps")
    wheels = base / "wheels"
    make_wheel(wheels, "beta", "1.0")
    index = LocalIndex(wheels)
    port = _free_port()
    marks = base / "marks"
    marks.mkdir()
    check = f'[host.live_check]\nurl = "http://127.0.0.1:{port}/health"\nbody = "ok"\ndeadline = 6\ninterval = 0.3\n'
    mark = f'["sh", "-c", "echo $CHIRON_RELEASE $CHIRON_PREVIOUS $(command -v python) >> {marks}/{{}}"]'

    def one(version: str, epoch: int, host_toml: str, healthy: bool = True) -> Path:
        spec_dir = base / version
        spec_dir.mkdir()
        (spec_dir / "compose.yaml").write_text(_compose_yaml(version, port, healthy))
        extra = (
            f'[[images]]\nref = "{IMAGE}"\nsource = "docker"\n\n[[files]]\nsrc = "compose.yaml"\ndest = "compose.yaml"\n\n'
            f'[host]\ncompose = "compose.yaml"\n{host_toml}\n{check}'
        )
        spec = write_spec(spec_dir, keys=keys, index_url=index.url, requirements=["beta==1.0"], name="act",
                          version=version, environments=ENV_311, extra=extra)  # fmt: skip
        out = base / f"act-{version}.pex"
        build(BuildOptions(spec=spec, output=out, tool_wheels=tool_wheels, cache_dir=base / "cache",
                           source_date_epoch=epoch, show_progress=False))  # fmt: skip
        return out

    try:
        return Apps(
            keys=keys,
            port=port,
            marks=marks,
            image_id=act_image,
            v1=one("1.0.0", E, ""),
            v2=one("1.1.0", E + 100, f"post_switch = {mark.format('post_switch')}\n"),
            v3=one("1.2.0", E + 200, f"on_revert = {mark.format('on_revert')}\n", healthy=False),
            hang=one("1.3.0", E + 300, 'post_switch = { argv = ["sleep", "60"], timeout = 1 }\n'),
            pre_fail=one("1.4.0", E + 400, 'pre_switch = ["sh", "-c", "echo maintenance window closed >&2; exit 9"]\n'),
        )
    finally:
        index.close()


@pytest.fixture(autouse=True)
def _no_project_left(act_image: str):  # type: ignore[no-untyped-def]
    """Every test starts and ends without the appliance's containers."""

    def down() -> None:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)

    down()
    yield
    down()


def _get(port: int, path: str) -> tuple[int, str]:
    """One GET to the service on 127.0.0.1, never through a proxy; (0, reason) when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except OSError as exc:
        return 0, str(exc)


def _serves(port: int) -> str:
    """The version the service answers with, waiting (bounded) for a container just (re)started."""
    for _ in range(100):
        status, body = _get(port, "/version")
        if status == 200:
            return body.strip()
        time.sleep(0.1)
    return f"no answer: {status} {body}"


def _install(apps: Apps, prefix: Path, archive: Path) -> host.HostResult:
    return host.install(host.InstallOptions(archive=archive, prefix=prefix, root_file=apps.keys / "1.root.json"))


def _upgrade(archive: Path, prefix: Path, **kw) -> host.HostResult:  # type: ignore[no-untyped-def]
    return host.upgrade(host.InstallOptions(archive=archive, prefix=prefix, **kw))


def _chiron(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from chiron.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def _audit(prefix: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (prefix / "state" / "audit.jsonl").read_text().splitlines()]


def _live(prefix: Path) -> str:
    return os.readlink(prefix / "current").removeprefix("releases/")


def _signed_id(archive: Path) -> str:
    """The config digest of the appliance's image for this host: the ID the Engine must report."""
    from chiron.archive.reader import read_layout

    layout, data = read_layout(archive), archive.read_bytes()

    def member(name: str) -> dict:  # type: ignore[type-arg]
        m = layout.member(name)
        assert m is not None
        return json.loads(data[m.offset : m.offset + m.length])

    digest = member("appliance.json")["images"][0]["manifests"]["linux/amd64"]
    return str(member(f"images/blobs/sha256/{digest.partition(':')[2]}")["config"]["digest"])


def _running_image() -> str:
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
    )
    (cid,) = out.stdout.split()
    return subprocess.run(["docker", "inspect", "-f", "{{.Image}}", cid], capture_output=True, text=True).stdout.strip()


def test_v1_serves_and_a_healthy_v2_is_switched_and_committed(apps: Apps, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    first = _install(apps, prefix, apps.v1)
    assert first.trial is not None and first.trial["phase"] == "committed" and first.trial["last_check"]["ok"]
    assert _serves(apps.port) == "1.0.0"
    # The service runs exactly the signed image: the Compose file the host runs pins it by ID (the
    # signed config digest), whatever the tag names in the Engine.
    pinned = json.loads((prefix / "releases" / first.release / "compose.json").read_text())
    assert pinned["services"]["web"]["image"] == _signed_id(apps.v1) == _running_image()

    second = _upgrade(apps.v2, prefix)
    assert _live(prefix) == second.release and second.trial is not None and second.trial["phase"] == "committed"
    assert _serves(apps.port) == "1.1.0"
    rel, prev = prefix / "releases" / second.release, prefix / "releases" / first.release
    assert (apps.marks / "post_switch").read_text().split() == [str(rel), str(prev), f"{rel}/venv/bin/python"]
    ops = [(e["op"], e["result"]) for e in _audit(prefix)]
    assert ops == [("install", "ok"), ("commit", "ok"), ("upgrade", "ok"), ("commit", "ok")]
    assert _audit(prefix)[-1]["by"] == "live-check"
    info = host.status(prefix, None)
    assert info["trial"]["phase"] == "committed" and info["trial"]["release"] == second.release
    assert info["trial"]["last_check"]["output"] == f"http://127.0.0.1:{apps.port}/health answered HTTP 200"
    # A deliberate rollback takes the application along: v1's project is up again.
    back = host.rollback(prefix, None)
    assert back.release == first.release and _serves(apps.port) == "1.0.0"


def test_a_v3_failing_its_live_check_reverts_by_itself(apps: Apps, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    good = _install(apps, prefix, apps.v2)
    metadata = {p.name: p.read_bytes() for p in (prefix / "state" / "metadata").iterdir()}
    proc = _chiron(["upgrade", str(apps.v3), "--prefix", str(prefix)])
    assert proc.returncode == 3, proc.stderr
    assert "failed its trial and was reverted" in proc.stderr and "HTTP 404" in proc.stderr
    assert _live(prefix) == good.release
    assert _serves(apps.port) == "1.1.0"
    state = json.loads((prefix / "state" / "state.json").read_text())
    failed = state["previous"]
    assert state["current"] == good.release and failed.startswith("act-1.2.0-")
    # on_revert of the failed release ran with the release brought back as CHIRON_RELEASE.
    rel, left = prefix / "releases" / good.release, prefix / "releases" / failed
    assert (apps.marks / "on_revert").read_text().split() == [str(rel), str(left), f"{rel}/venv/bin/python"]
    entries = _audit(prefix)
    assert [(e["op"], e["result"]) for e in entries[-3:]] == [("upgrade", "ok"), ("trial", "failed"), ("revert", "ok")]
    assert entries[-3]["trial"]["external"] is False
    assert f"127.0.0.1:{apps.port}/health answered HTTP 404" in entries[-2]["check"]
    assert (entries[-1]["from_release"], entries[-1]["to_release"]) == (failed, good.release)
    # A revert is not a downgrade of trust: v3's metadata stays trusted (a v2 archive is now older).
    now_trusted = {p.name: p.read_bytes() for p in (prefix / "state" / "metadata").iterdir()}
    assert now_trusted["targets.json"] != metadata["targets.json"]
    assert (
        json.loads(now_trusted["targets.json"])["signed"]["version"]
        > json.loads(metadata["targets.json"])["signed"]["version"]
    )
    status = _chiron(["status", "--prefix", str(prefix)])
    assert f"last trial: release {failed} reverted" in status.stdout
    assert "last live check: failed" in status.stdout and "HTTP 404" in status.stdout


def test_sigkill_during_the_trial_then_recover_reverts(apps: Apps, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    good = _install(apps, prefix, apps.v1)
    proc = _chiron(["upgrade", str(apps.v2), "--prefix", str(prefix)], env={"CHIRON_TEST_CRASH_AT": "compose-up"})
    assert proc.returncode == -9, proc.stderr
    assert _live(prefix) != good.release and _serves(apps.port) == "1.1.0"  # killed mid-trial, v2 up
    info = json.loads(_chiron(["status", "--prefix", str(prefix), "--json"]).stdout)
    assert info["trial"]["phase"] == "on-trial" and not info["trial"]["external"]
    rec = _chiron(["recover", "--prefix", str(prefix)])
    assert rec.returncode == 0, rec.stderr
    assert "was reverted" in rec.stdout and "interrupted" in rec.stdout
    assert _live(prefix) == good.release and _serves(apps.port) == "1.0.0"
    assert host.status(prefix, None)["trial"]["phase"] == "reverted"
    assert [(e["op"], e["result"]) for e in _audit(prefix)[-2:]] == [("trial", "failed"), ("revert", "ok")]


def test_trial_until_waits_for_chiron_commit(apps: Apps, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    _install(apps, prefix, apps.v1)
    proc = _chiron(["upgrade", str(apps.v2), "--prefix", str(prefix), "--trial-until", "30m"])
    assert proc.returncode == 0, proc.stderr
    assert "on trial until" in proc.stdout and "chiron commit" in proc.stdout
    assert _serves(apps.port) == "1.1.0"
    trial = host.status(prefix, None)["trial"]
    assert trial["phase"] == "on-trial" and trial["external"] and trial["last_check"]["ok"]
    # Another upgrade waits for the decision; recover leaves a trial in time alone.
    with pytest.raises(Refused, match="is on trial until"):
        _upgrade(apps.v3, prefix)
    assert _chiron(["recover", "--prefix", str(prefix)]).stdout.strip() == "nothing to recover"
    done = _chiron(["commit", "--prefix", str(prefix)])
    assert done.returncode == 0, done.stderr
    assert f"committed release {trial['release']}" in done.stdout
    assert _audit(prefix)[-1]["op"] == "commit" and _audit(prefix)[-1]["by"] == "operator"
    assert _live(prefix) == trial["release"] and host.status(prefix, None)["trial"]["phase"] == "committed"
    again = _chiron(["commit", "--prefix", str(prefix)])
    assert again.returncode == 2 and "no release is on trial" in again.stderr


def test_a_post_switch_hook_that_hangs_past_its_timeout_reverts(apps: Apps, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    good = _install(apps, prefix, apps.v1)
    with pytest.raises(
        EnvironmentProblem,
        match=r"failed its trial and was reverted: .* post_switch hook did not finish within 1 s \(stopped\)",
    ):
        _upgrade(apps.hang, prefix)
    assert _live(prefix) == good.release and _serves(apps.port) == "1.0.0"
    assert [(e["op"], e["result"]) for e in _audit(prefix)[-2:]] == [("trial", "failed"), ("revert", "ok")]


def test_a_failing_pre_switch_hook_aborts_before_the_switch(apps: Apps, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    good = _install(apps, prefix, apps.v1)
    with pytest.raises(EnvironmentProblem, match=r"pre_switch hook failed \(exit 9\): maintenance window closed"):
        _upgrade(apps.pre_fail, prefix)
    assert _live(prefix) == good.release and _serves(apps.port) == "1.0.0"
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == [good.release]  # nothing half-applied
    last = _audit(prefix)[-1]
    assert (last["op"], last["result"], last["stays_on"]) == ("upgrade", "failed", good.release)
    assert host.status(prefix, None)["trial"]["release"] == good.release  # no trial began


def test_a_compose_application_without_an_engine_fails_before_the_switch(
    apps: Apps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    prefix = tmp_path / "p"
    with pytest.raises(EnvironmentProblem, match="no Docker Engine is reachable"):
        _install(apps, prefix, apps.v1)
    assert not (prefix / "current").exists() and not (prefix / "state" / "trial.json").exists()
    assert list((prefix / "releases").iterdir()) == []


def test_a_compose_file_naming_an_image_not_carried_is_refused_at_build(
    keys: Path, index, tool_wheels: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "compose.yaml").write_text(_compose_yaml("1.0.0", 1).replace(IMAGE, "chiron-test/elsewhere:2"))
    extra = (
        f'[[images]]\nref = "{IMAGE}"\nsource = "docker"\n\n[[files]]\nsrc = "compose.yaml"\ndest = "compose.yaml"\n\n'
        '[host]\ncompose = "compose.yaml"\n'
    )
    spec = write_spec(tmp_path, keys=keys, index_url=index.url, requirements=["beta==1.0"], extra=extra)
    out = tmp_path / "x.pex"
    with pytest.raises(SpecError, match=r"chiron-test/elsewhere:2 are not carried by the appliance"):
        build(BuildOptions(spec=spec, output=out, tool_wheels=tool_wheels, cache_dir=tmp_path / "c",
                           show_progress=False))  # fmt: skip
    assert not out.exists()


def test_doctor_checks_the_compose_cli(apps: Apps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chiron.engines.doctor import doctor

    checks = {c.name: c for c in doctor(apps.v1, None, None)}
    assert checks["compose"].ok and checks["images"].ok
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    checks = {c.name: c for c in doctor(apps.v1, None, None)}
    assert not checks["compose"].ok and checks["compose"].severity == "error"
    assert "neither 'docker compose' nor 'docker-compose'" in checks["compose"].detail
    assert shutil.which("docker-compose") is None
