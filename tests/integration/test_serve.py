"""chiron serve with real parts on loopback: uvicorn on a free port, pip, uv, curl and chiron itself as
clients, a mirror store refreshed by jobs from a loopback index, hosts installed and upgraded from the
service, and the service killed in the middle of a job."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chiron.archive.reader import ArchiveReader, read_layout
from chiron.core import filelock as _lockfile
from chiron.engines import host, mirror
from chiron.service.settings import Settings

from helpers import LocalIndex, Running, call, free_port, get_json, make_tokens, make_wheel, wait_ready, write_spec

BIN = Path(sys.executable).parent
CHIRON = str(BIN / "chiron")
EPOCH = int(time.time()) - 3600


@pytest.fixture(autouse=True, scope="module")
def _curl_present() -> None:
    assert shutil.which("curl"), "these tests use curl as a client: apt-get install curl (.ci/run does)"


def access_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def installer_env(tmp: Path) -> dict[str, str]:
    """pip and uv with no configuration of this machine (no extra indexes or find-links)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp / "uv-cache")}


def run(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CHIRON, *args], capture_output=True, text=True, timeout=600, **kw)
    if check:
        assert proc.returncode == 0, f"chiron {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


# ---------------------------------------------------------------- the index and downloads


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, appliance: Path, keys: Path) -> Any:
    """The session appliance (alpha, beta, gamma for CPython 3.11 and 3.12) served from a directory."""
    d = tmp_path_factory.mktemp("served")
    (d / "apps").mkdir()
    shutil.copyfile(appliance, d / "apps" / "demo.pex")
    shutil.copyfile(appliance.with_name(appliance.name + ".sig"), d / "apps" / "demo.pex.sig")
    toks = make_tokens(d / "serve.db")
    settings = Settings(
        db=d / "serve.db",
        cache_dir=d / "cache",
        appliances=d / "apps",
        root_file=keys / "1.root.json",
        access_log=d / "access.jsonl",
    )
    svc = Running(settings)
    svc.tokens = toks  # type: ignore[attr-defined]
    svc.dir = d  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def _requirements(archive: Path, env: str, dest: Path) -> Path:
    with ArchiveReader(archive) as reader:
        dest.write_bytes(reader.read(f"lock/requirements-{env}.txt"))
    return dest


def _file_requests(log: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(wheel downloads, core metadata downloads) by file name."""
    files = [e["path"].rsplit("/", 1)[1] for e in log if e["path"].startswith("/files/") and e["status"] == 200]
    return [f for f in files if not f.endswith(".metadata")], [f for f in files if f.endswith(".metadata")]


def _install(argv: list[str], env: dict[str, str], log: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Run an installer; the wheel and metadata files it fetched from the service, and every request."""
    mark = len(access_log(log))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{argv[:3]}:\n{proc.stdout}\n{proc.stderr}"
    requests = access_log(log)[mark:]
    assert not [e for e in requests if e["status"] >= 400], requests
    wheels, metadata = _file_requests(requests)
    return wheels, metadata, requests


def test_pip_and_uv_install_the_locked_set_with_hashes(served: Any, appliance: Path, tmp_path: Path) -> None:
    site = f"http://__token__:{served.tokens['read']}@127.0.0.1:{served.port}"
    index = f"{site}/simple/"
    req = f"{site}/index/latest/requirements/cp311.txt"  # the lock's requirements, as the appliance signs them
    assert call(served.url, "GET", "/index/latest/requirements/cp311.txt", served.tokens["read"])[2] == (
        _requirements(appliance, "cp311", tmp_path / "requirements.txt").read_bytes()
    )
    locked = [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.1-py3-none-any.whl",
        "gamma-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    ]
    env = installer_env(tmp_path)
    log = served.dir / "access.jsonl"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "install",
        "--no-cache-dir",
        "--index-url",
        index,
    ]
    uv = [str(BIN / "uv"), "pip", "install", "--python", sys.executable, "--no-cache", "--index-url", index]
    dists = {"alpha-1.0.dist-info", "beta-1.1.dist-info", "gamma-2.0.dist-info"}

    # Resolving reads PEP 658 metadata only: pip downloads no wheel to learn dependencies.
    wheels, metadata, _ = _install([*pip, "--dry-run", "--ignore-installed", "alpha==1.0", "gamma==2.0"], env, log)
    assert wheels == [] and sorted(m.removesuffix(".metadata") for m in metadata) == locked
    # The locked set with hashes: each wheel fetched once, checked against the lock by pip.
    wheels, _, _ = _install(
        [*pip, "--no-compile", "--require-hashes", "-r", req, "--target", str(tmp_path / "pip")], env, log
    )
    assert sorted(wheels) == locked and {p.name for p in (tmp_path / "pip").glob("*.dist-info")} == dists
    wheels, metadata, _ = _install([*uv, "--require-hashes", "-r", req, "--target", str(tmp_path / "uv")], env, log)
    assert sorted(wheels) == locked and {p.name for p in (tmp_path / "uv").glob("*.dist-info")} == dists
    assert {m.removesuffix(".metadata") for m in metadata} <= set(locked)
    assert served.tokens["read"] not in log.read_text()  # the access log never holds a credential


def test_tokens_on_the_wire(served: Any, tmp_path: Path) -> None:
    """What a client sees: 401 with a challenge without a valid token, 403 for a token without the scope."""
    url = f"{served.url}simple/"
    anonymous = subprocess.run(["curl", "-s", "-i", url], capture_output=True, text=True, timeout=60).stdout
    assert anonymous.startswith("HTTP/1.1 401") and 'www-authenticate: basic realm="chiron"' in anonymous.lower()
    assert "application/problem+json" in anonymous
    wrong = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", "__token__:nope", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.stdout == "401"
    report_only = f"http://__token__:{served.tokens['report']}@127.0.0.1:{served.port}/simple/"
    mark = len(access_log(served.dir / "access.jsonl"))
    pip_download = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "download",
        "--no-deps",
        "-d",
        str(tmp_path),
    ]
    pip = subprocess.run(
        [*pip_download, "--index-url", report_only, "alpha==1.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=installer_env(tmp_path),
    )
    assert pip.returncode != 0 and not list(tmp_path.glob("*.whl"))
    seen = access_log(served.dir / "access.jsonl")[mark:]
    # (The access-log line of a request is written just after its answer: the curl above may land here too.)
    assert ("/simple/alpha/", 403) in [(e["path"], e["status"]) for e in seen]
    assert not [e for e in seen if e["status"] < 400]
    refused = run(
        "download",
        f"{served.url}appliances/latest",
        "-o",
        str(tmp_path / "x.pex"),
        "--token",
        served.tokens["report"],
        check=False,
    )
    assert refused.returncode == 4 and "403" in refused.stderr and "Traceback" not in refused.stderr


def test_curl_resume_gives_the_same_bytes(served: Any, appliance: Path, tmp_path: Path) -> None:
    url = f"{served.url}appliances/demo.pex"
    out = tmp_path / "demo.pex"
    auth = ["-H", f"Authorization: Bearer {served.tokens['read']}"]
    size = appliance.stat().st_size
    first = subprocess.run(["curl", "-sf", *auth, "-r", f"0-{size // 3}", "-o", str(out), url], timeout=60)
    assert first.returncode == 0 and out.stat().st_size == size // 3 + 1  # an interrupted download
    before = _sendfile_bytes(served)
    resumed = subprocess.run(["curl", "-sf", *auth, "-C", "-", "-o", str(out), url], capture_output=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == appliance.read_bytes()
    # The rest of the file went out with sendfile (the zero-copy path of the pinned uvicorn still works).
    assert _sendfile_bytes(served) - before == size - (size // 3 + 1)
    # chiron download continues a partial download the same way, and fetches the detached signature.
    work = tmp_path / "pull" / ".chiron-download"
    work.mkdir(parents=True)
    _status, headers, _ = call(served.url, "HEAD", "/appliances/demo.pex", served.tokens["read"])
    sha = headers["etag"].strip('"')
    (work / f".partial-{sha}").write_bytes(appliance.read_bytes()[: size // 2])
    pulled = run(
        "download",
        f"{served.url}appliances/latest",
        "-o",
        str(tmp_path / "pull" / "demo.pex"),
        "--json",
        env={**os.environ, "CHIRON_TOKEN": served.tokens["read"]},
    )
    doc = json.loads(pulled.stdout)
    assert doc["resumed"] and doc["bytes_downloaded"] == size - size // 2 and doc["sha256"] == sha
    assert (tmp_path / "pull" / "demo.pex").read_bytes() == appliance.read_bytes()
    assert Path(doc["signature"]).read_bytes() == appliance.with_name(appliance.name + ".sig").read_bytes()
    assert not work.exists()


def _sendfile_bytes(svc: Running) -> float:
    text = call(svc.url, "GET", "/metrics", svc.tokens["read"])[2].decode()  # type: ignore[attr-defined]
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("chiron_sendfile_bytes_total")))


def test_tls_and_a_site_ca(tmp_path: Path, appliance: Path, keys: Path) -> None:
    cert, key = _self_signed(tmp_path)
    (tmp_path / "apps").mkdir()
    shutil.copyfile(appliance, tmp_path / "apps" / "demo.pex")
    toks = make_tokens(tmp_path / "serve.db")
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        appliances=tmp_path / "apps",
        root_file=keys / "1.root.json",
        json_log=False,
    )
    svc = Running(settings, certfile=cert, keyfile=key)
    try:
        env = {**os.environ, "CHIRON_TOKEN": toks["read"]}
        deadline = time.monotonic() + 60
        while True:  # readiness over TLS: the first verification may still be running
            got = run(
                "download",
                f"{svc.url}appliances/latest",
                "-o",
                str(tmp_path / "a.pex"),
                "--ca-file",
                str(cert),
                "--json",
                check=False,
                env=env,
            )
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "a.pex").read_bytes() == appliance.read_bytes()  # streamed: TLS has no sendfile
        untrusted = run("download", f"{svc.url}appliances/latest", "-o", str(tmp_path / "b.pex"), check=False, env=env)
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        assert "Traceback" not in untrusted.stderr and not (tmp_path / "b.pex").exists()
    finally:
        svc.stop()


def _self_signed(d: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chiron test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "cert.pem", d / "key.pem"


def test_a_wheel_changed_on_disk_is_never_served(tmp_path: Path, appliance: Path, keys: Path) -> None:
    (tmp_path / "apps").mkdir()
    copy = tmp_path / "apps" / "demo.pex"
    shutil.copyfile(appliance, copy)
    toks = make_tokens(tmp_path / "serve.db")
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        appliances=tmp_path / "apps",
        root_file=keys / "1.root.json",
        json_log=False,
        rescan_every=0.2,
    )
    svc = Running(settings)
    try:
        status, page = get_json(svc.url, "/simple/beta/?format=application/vnd.pypi.simple.v1%2Bjson", toks["read"])
        (f,) = page["files"]
        path = "/" + f["url"].removeprefix("../../")
        assert call(svc.url, "GET", path, toks["read"])[0] == 200
        wheel = read_layout(copy).member("wheels/" + f["filename"])
        assert wheel is not None
        with copy.open("r+b") as out:  # one byte of the wheel, in place
            out.seek(wheel.offset + wheel.length // 2)
            byte = out.read(1)
            out.seek(-1, 1)
            out.write(bytes([byte[0] ^ 1]))
        status, headers, body = call(svc.url, "GET", path, toks["read"])
        assert status == 503 and json.loads(body)["type"].endswith("/appliance-changed") and "retry-after" in headers
        curl = subprocess.run(
            [
                "curl",
                "-sf",
                "-H",
                f"Authorization: Bearer {toks['read']}",
                "-o",
                str(tmp_path / "w"),
                svc.url.rstrip("/") + path,
            ],
            timeout=60,
        )
        assert curl.returncode != 0 and not (tmp_path / "w").exists()
        deadline = time.monotonic() + 30
        while not get_json(svc.url, "/v1/appliances", toks["read"])[1]["failed"] and time.monotonic() < deadline:
            time.sleep(0.1)
        listing = get_json(svc.url, "/v1/appliances", toks["admin"])[1]  # why a file failed: for an admin
        assert listing["appliances"] == [] and f["filename"] in listing["failed"][0]["problem"]
        assert call(svc.url, "GET", path, toks["read"])[0] in (404, 503)
        # A good copy put back (a new file renamed over it) is verified and served again.
        shutil.copyfile(appliance, tmp_path / "apps" / ".new")
        os.replace(tmp_path / "apps" / ".new", copy)
        deadline = time.monotonic() + 30
        while call(svc.url, "GET", path, toks["read"])[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, _h, body = call(svc.url, "GET", path, toks["read"])
        assert status == 200 and body == appliance.read_bytes()[wheel.offset : wheel.offset + wheel.length]
    finally:
        svc.stop()


def test_x_accel_redirect_hands_whole_files_to_the_front_end(tmp_path: Path, appliance: Path, keys: Path) -> None:
    (tmp_path / "apps").mkdir()
    shutil.copyfile(appliance, tmp_path / "apps" / "demo.pex")
    toks = make_tokens(tmp_path / "serve.db")
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        appliances=tmp_path / "apps",
        root_file=keys / "1.root.json",
        json_log=False,
        x_accel_redirect="/_chiron/",
    )
    svc = Running(settings)
    try:
        status, headers, body = call(svc.url, "GET", "/appliances/demo.pex", toks["read"])
        assert status == 200 and headers["x-accel-redirect"] == "/_chiron/appliances/demo.pex" and body == b""
        page = get_json(svc.url, "/simple/alpha/?format=application/vnd.pypi.simple.v1%2Bjson", toks["read"])[1]
        sha = page["files"][0]["hashes"]["sha256"]
        status, headers, _ = call(svc.url, "GET", "/" + page["files"][0]["url"].removeprefix("../../"), toks["read"])
        assert headers["x-accel-redirect"] == f"/_chiron/files/{sha[:2]}/{sha}"
        import hashlib

        assert hashlib.sha256((tmp_path / "cache" / "files" / sha[:2] / sha).read_bytes()).hexdigest() == sha
    finally:
        svc.stop()


# ---------------------------------------------------------------- a site: jobs, hosts, receipts, upgrades


@pytest.fixture()
def spec(tmp_path: Path, keys: Path, upstream: LocalIndex) -> Path:
    return write_spec(tmp_path / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])


def _first_version(store: Path, spec: Path, tool_wheels: Path) -> mirror.RefreshResult:
    return mirror.refresh(
        mirror.RefreshOptions(
            store=store, spec=spec, tool_wheels=tool_wheels, source_date_epoch=EPOCH, show_progress=False
        )
    )


def _wait_job(url: str, job: str, token: str, until: tuple[str, ...], timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = get_json(url, f"/v1/jobs/{job}", token)[1]
        if doc["state"] in until or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def _fleet(svc: Running, toks: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in get_json(svc.url, "/v1/hosts", toks["admin"])[1]["hosts"]}


def test_a_site_refreshes_by_job_and_its_hosts_upgrade_and_report(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded: Any
) -> None:
    """The issue's done-when on loopback: a refresh job signs N+1, two hosts upgrade from the service (one
    by a delta made for it, one by the full appliance), and their signed receipts show it."""
    store = seeded(tmp_path / "store")
    first = _first_version(store, spec, tool_wheels)
    toks = make_tokens(tmp_path / "serve.db")
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        store=store,
        tool_wheels=tool_wheels,
        access_log=tmp_path / "access.jsonl",
        rescan_every=0.5,
    )
    svc = Running(settings)
    try:
        env = {**os.environ, "CHIRON_TOKEN": toks["host"]}
        for name in ("a", "b"):
            installed = host.install(
                host.InstallOptions(archive=first.appliance, prefix=tmp_path / name, root_file=keys / "1.root.json")
            )  # type: ignore[arg-type]
            # The host's key is made at install, named after the hostname; the first receipt renames it.
            made = [n for n in installed.notices if n.startswith("host key made: ")]
            assert made and (tmp_path / name / "state" / "identity" / "host-key.pem").is_file(), installed.notices
            key_sha256 = made[0].split(" key sha256 ")[1].split()[0]
            refused = run(
                "receipt",
                "--prefix",
                str(tmp_path / name),
                "--server",
                svc.url,
                "--host-id",
                f"host-{name}",
                check=False,
                env=env,
            )
            assert refused.returncode == 4 and "enrolment sent" in refused.stderr, refused.stderr
            assert get_json(svc.url, f"/v1/hosts/host-{name}/approve", toks["admin"], "POST", {})[0] == 200
            run("receipt", "--prefix", str(tmp_path / name), "--server", svc.url, env=env)
            shown = run("receipt", "--prefix", str(tmp_path / name), "--show-key").stdout
            assert shown.strip() == f"host-{name} key sha256 {key_sha256}", shown
        assert all(h["behind"] is False for h in _fleet(svc, toks).values())

        make_wheel(upstream.directory, "beta", "1.1")
        status, job = get_json(svc.url, "/v1/jobs/refresh", toks["admin"], "POST", {})
        assert status == 202
        busy = get_json(svc.url, "/v1/jobs/refresh", toks["admin"], "POST", {})
        assert busy[0] == 409 and busy[1]["type"].endswith("/job-running")
        done = _wait_job(svc.url, job["id"], toks["admin"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done
        assert done["result"]["schema"] == "chiron.mirror-refresh/1" and done["result"]["changed"]
        assert any("built" in line["line"] for line in done["log"])
        newest = done["result"]["metadata_version"]
        deadline = time.monotonic() + 30
        while get_json(svc.url, "/v1/appliances", toks["read"])[1]["appliances"][-1]["metadata_version"] != newest:
            assert time.monotonic() < deadline, "the new appliance was never served"
            time.sleep(0.2)
        for name in ("a", "b"):
            run("receipt", "--prefix", str(tmp_path / name), "--server", svc.url, env=env)
        assert all(h["behind"] is True for h in _fleet(svc, toks).values())

        run("upgrade", svc.url, "--prefix", str(tmp_path / "a"), env=env)  # a delta made for host a
        run("upgrade", f"{svc.url}appliances/latest", "--prefix", str(tmp_path / "b"), env=env)  # the full file
        log = access_log(tmp_path / "access.jsonl")
        assert [e for e in log if e["path"] == "/v1/deltas" and e["status"] == 200]
        assert [e for e in log if e["path"].startswith("/deltas/") and e["status"] == 200]
        for name in ("a", "b"):
            assert host.status(tmp_path / name, None)["metadata"]["targets"]["version"] == newest
        # The tool an appliance installs can serve (it carries the serve extra).
        tool = subprocess.run(
            [str(tmp_path / "a" / "bin" / "chiron"), "serve", "openapi"], capture_output=True, text=True, timeout=120
        )
        assert tool.returncode == 0 and json.loads(tool.stdout)["info"]["title"] == "chiron serve", tool.stderr
        # Host a reports over the network; host b's receipt travels out on media.
        run("receipt", "--prefix", str(tmp_path / "a"), "--server", svc.url, env=env)
        run("receipt", "--prefix", str(tmp_path / "b"), "-o", str(tmp_path / "b.receipt.json"))
        run("serve", "receipts", "import", str(tmp_path / "b.receipt.json"), "--db", str(tmp_path / "serve.db"))
        again = run(
            "serve",
            "receipts",
            "import",
            str(tmp_path / "b.receipt.json"),
            "--db",
            str(tmp_path / "serve.db"),
            check=False,
        )
        assert again.returncode == 4 and "not newer" in again.stderr
        fleet = _fleet(svc, toks)
        assert {h["behind"] for h in fleet.values()} == {False}
        assert {h["targets_version"] for h in fleet.values()} == {newest}
        assert fleet["host-a"]["last_operation"]["op"] == "upgrade"
    finally:
        svc.stop()


def test_the_service_killed_during_a_job_marks_it_failed_at_the_next_start(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded: Any
) -> None:
    store = seeded(tmp_path / "store")
    _first_version(store, spec, tool_wheels)
    big = make_wheel(upstream.directory, "beta", "1.1", payload=b"#" + os.urandom(2 << 20).hex().encode()[: 2 << 20])
    upstream.slow[big.name] = 0.1  # ~32 chunks of 64 KiB: seconds to kill the service in
    toks = make_tokens(tmp_path / "serve.db")
    port = free_port()
    argv = [
        CHIRON,
        "serve",
        "--store",
        str(store),
        "--db",
        str(tmp_path / "serve.db"),
        "--port",
        str(port),
        "--tool-wheels",
        str(tool_wheels),
        "--access-log",
        str(tmp_path / "access.jsonl"),
    ]
    url = f"http://127.0.0.1:{port}/"
    with (tmp_path / "serve.log").open("wb") as err:
        proc = subprocess.Popen(argv, stderr=err)
        wait_ready(url)
        status, job = get_json(url, "/v1/jobs/refresh", toks["admin"], "POST", {"force": True})
        assert status == 202
        deadline = time.monotonic() + 120
        while upstream.sent[big.name] < 256 << 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        running = get_json(url, f"/v1/jobs/{job['id']}", toks["admin"])[1]
        assert running["state"] == "running" and running["pid"], running
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while _alive(running["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(running["pid"]), "the worker outlived the service"
        with _lockfile.hold(store / ".lock", "test"):  # the store's lock died with the worker
            pass

        proc = subprocess.Popen(argv, stderr=err)
        try:
            wait_ready(url)
            failed = get_json(url, f"/v1/jobs/{job['id']}", toks["admin"])[1]
            assert failed["state"] == "failed" and "stopped while the job was running" in failed["error"]
            # SIGTERM: a download in progress (a slow client) is let finish before the service stops.
            appliance = next((store / "appliances").glob("*.pex"))
            curl = subprocess.Popen(
                [
                    "curl",
                    "-sf",
                    "--limit-rate",
                    "4M",
                    "-H",
                    f"Authorization: Bearer {toks['read']}",
                    "-o",
                    str(tmp_path / "dl.pex"),
                    f"{url}appliances/{appliance.name}",
                ]
            )
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert curl.wait(120) == 0 and (tmp_path / "dl.pex").read_bytes() == appliance.read_bytes()
            # uvicorn stops, then re-raises the signal: death by SIGTERM, which systemd counts as a clean stop.
            assert proc.wait(60) in (0, -signal.SIGTERM)
            assert b"Traceback" not in (tmp_path / "serve.log").read_bytes()
        finally:
            if proc.poll() is None:
                proc.kill()
    upstream.slow.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status not in ("Z", "X")  # a zombie is dead, only not yet reaped


def test_the_timer_runs_refresh_jobs_instead_of_cron(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded: Any
) -> None:
    store = seeded(tmp_path / "store")
    _first_version(store, spec, tool_wheels)
    make_wheel(upstream.directory, "beta", "1.1")
    toks = make_tokens(tmp_path / "serve.db")
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        store=store,
        tool_wheels=tool_wheels,
        refresh_every=3600,
        json_log=False,
    )
    svc = Running(settings)
    try:
        deadline = time.monotonic() + 60
        while not get_json(svc.url, "/v1/jobs", toks["admin"])[1]["jobs"] and time.monotonic() < deadline:
            time.sleep(0.2)
        (job,) = get_json(svc.url, "/v1/jobs", toks["admin"])[1]["jobs"]  # the store never had one: at once
        assert job["requested_by"] == "timer"
        done = _wait_job(svc.url, job["id"], toks["admin"], ("succeeded", "failed"))
        assert done["state"] == "succeeded" and done["result"]["changed"], done
        time.sleep(1)
        assert len(get_json(svc.url, "/v1/jobs", toks["admin"])[1]["jobs"]) == 1  # the next one is an hour away
    finally:
        svc.stop()
