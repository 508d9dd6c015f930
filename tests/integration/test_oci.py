"""Fleet distribution through an OCI registry: Debian's docker-registry (distribution 2.8, no referrers
API) on 127.0.0.1, plain and with TLS and htpasswd; skopeo, the docker CLI and ssh-keygen as
independent clients; the registry's own access log counts what each pull fetched."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chiron.archive.delta import extents
from chiron.cli import app as cli_app
from chiron.cli import main
from chiron.engines.inspect import inspect_archive
from chiron.engines.oci import PublishOptions, publish

from conftest import do_build, start_registry
from helpers import LocalRegistry, make_tls, ssh_verify, write_spec

REPO_PATH = "team/demo"


@pytest.fixture(autouse=True)
def _fresh_cli_state() -> None:
    cli_app.state.update({"verbose": False, "json": False, "log_format": "human"})


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run chiron in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, keys: Path, index, tool_wheels: Path, session_cache: Path):  # type: ignore[no-untyped-def]
    """demo 1.0.0 (beta 1.0) and 1.1.0 (beta 1.1, signed later): one wheel and the metadata differ."""
    base = tmp_path_factory.mktemp("ocivers")
    out = []
    for n, (version, beta) in enumerate((("1.0.0", "1.0"), ("1.1.0", "1.1"))):
        spec = write_spec(
            base / f"s{n}", keys=keys, index_url=index.url, requirements=[f"beta=={beta}"], version=version
        )
        built = do_build(spec, base / f"demo-{version}.pex", tool_wheels, session_cache, epoch=int(time.time()) + 5 * n)
        out.append(built.output)
    return out[0], out[1]


@pytest.fixture(scope="module")
def oci_registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    served = start_registry(tmp_path_factory.mktemp("ocireg"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def published(oci_registry: LocalRegistry, versions: tuple[Path, Path]) -> dict[str, Any]:
    """1.0.0 (also tagged latest), then 1.1.0, published into one repository."""
    base = f"oci://{oci_registry.address}/{REPO_PATH}"
    first = publish(PublishOptions(archive=versions[0], target=base, tags=["latest"]))
    second = publish(PublishOptions(archive=versions[1], target=base))
    return {"base": base, "first": first, "second": second}


def _digests(archive: Path) -> dict[str, str]:
    """region name -> blob digest of an appliance."""
    return {name: f"sha256:{sha}" for name, _off, _len, sha in extents(archive)}


def _gets(registry: LocalRegistry, since: int) -> list[tuple[str, int, int]]:
    """(digest, status, bytes) of the blob GETs in the access log after the first ``since`` of them."""
    return [(path.rsplit("/", 1)[1], status, n) for path, status, n in registry.requests("GET")[since:]]


def test_publish_then_pull_is_byte_identical_and_its_signature_verifies(
    published: dict[str, Any], versions: tuple[Path, Path], keys: Path, tmp_path: Path, capsys, oci_registry
) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen missing: .ci/run installs openssh-client")
    out = tmp_path / "pulled.pex"
    code, stdout, err = cli(
        capsys, "pull", f"{published['base']}:1.0.0", "-o", str(out), "--root", str(keys / "1.root.json")
    )
    assert code == 0, err
    assert "pulled demo 1.0.0" in stdout and "anchor: --root file" in stdout
    assert out.read_bytes() == versions[0].read_bytes()
    proc = ssh_verify(out, out.with_name(out.name + ".sig"), keys / "allowed_signers")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / ".chiron-pull").exists()  # the default staging is tidied away
    # An independent client sees chiron's artifact: its type, annotations and one layer per region.
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{oci_registry.address}/{REPO_PATH}:latest"],
        capture_output=True,
        check=True,
    ).stdout
    manifest = json.loads(raw)
    assert manifest["artifactType"] == "application/vnd.chiron.appliance.v1"
    assert manifest["annotations"]["org.opencontainers.image.version"] == "1.0.0"
    assert [layer["digest"] for layer in manifest["layers"]] == list(_digests(versions[0]).values())
    assert sum(layer["size"] for layer in manifest["layers"]) == versions[0].stat().st_size
    # distribution 2.8 has no referrers API: the signature and the SBOM are listed by the tag schema.
    index = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{oci_registry.address}/{REPO_PATH}:{published['first'].digest.replace(':', '-')}",
        ],
        capture_output=True,
        check=True,
    ).stdout
    types = sorted(m["artifactType"] for m in json.loads(index)["manifests"])
    assert types == ["application/vnd.chiron.appliance.signature.v1", "application/vnd.cyclonedx+json"]
    # A tag that does not exist: a usage error that lists the tags there are (not the referrer tags).
    code, _out, err = cli(capsys, "pull", f"{published['base']}:nope", "-o", str(tmp_path / "nope.pex"))
    assert code == 2 and "not found" in err and "1.0.0, 1.1.0, latest" in err and "sha256-" not in err


def test_the_second_version_uploads_only_what_changed(published: dict[str, Any], versions: tuple[Path, Path]) -> None:
    old, new = _digests(versions[0]), _digests(versions[1])
    changed = set(new.values()) - set(old.values())
    second = published["second"]
    assert second.uploaded_blobs == len(changed) and second.blobs == len(set(new.values()))
    assert second.uploaded_bytes < versions[1].stat().st_size // 100  # the tool zip was not sent again
    assert new["_archive/tool.zip"] == old["_archive/tool.zip"]


def test_a_host_holding_the_first_version_fetches_only_the_new_blobs(
    published: dict[str, Any], versions: tuple[Path, Path], oci_registry: LocalRegistry, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    old, new = _digests(versions[0]), _digests(versions[1])
    changed = set(new.values()) - set(old.values())
    mark = len(oci_registry.requests("GET"))
    out = tmp_path / "v2.pex"
    code, stdout, err = cli(
        capsys, "pull", f"{published['base']}:1.1.0", "-o", str(out), "--have", str(versions[0]), "--json"
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert out.read_bytes() == versions[1].read_bytes()
    fetched = {d for d, status, _n in _gets(oci_registry, mark) if status == 200}
    assert fetched & set(new.values()) == changed  # nothing it already held was fetched
    assert new["_archive/tool.zip"] not in fetched
    assert result["fetched_blobs"] == len(changed)
    assert result["reused_bytes"] == sum(
        length for name, _o, length, sha in extents(versions[1]) if f"sha256:{sha}" not in changed
    )


def test_install_and_upgrade_from_oci_and_a_tag_moved_back_is_refused(
    published: dict[str, Any], versions: tuple[Path, Path], oci_registry: LocalRegistry, keys: Path, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    base, prefix = published["base"], tmp_path / "host"
    code, stdout, err = cli(
        capsys, "install", f"{base}:1.0.0", "--prefix", str(prefix), "--root", str(keys / "1.root.json")
    )
    assert code == 0, err
    assert "installed demo 1.0.0" in stdout
    publish(PublishOptions(archive=versions[1], target=f"{base}:stable"))
    mark = len(oci_registry.requests("GET"))
    code, stdout, err = cli(capsys, "upgrade", f"{base}:stable", "--prefix", str(prefix))
    assert code == 0, err
    assert "upgraded to demo 1.1.0" in stdout
    old, new = _digests(versions[0]), _digests(versions[1])
    fetched = {d for d, _s, _n in _gets(oci_registry, mark)}
    assert fetched & set(new.values()) == set(new.values()) - set(old.values())  # the kept release served the rest
    assert not list((prefix / "state" / "oci").glob("*.pex"))  # the pulled file is not left behind
    # The tag is moved back to the older appliance: TUF refuses the rollback, nothing changes.
    publish(PublishOptions(archive=versions[0], target=f"{base}:stable"))
    code, _out, err = cli(capsys, "upgrade", f"{base}:stable", "--prefix", str(prefix))
    assert code == 4, err
    assert "allow-downgrade" in err
    code, stdout, _err = cli(capsys, "status", "--prefix", str(prefix), "--json")
    assert json.loads(stdout)["current"]["version"] == "1.1.0"


def test_a_blob_replaced_in_the_registry_storage_is_refused_by_name(
    versions: tuple[Path, Path], keys: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    registry = start_registry(tmp_path / "reg")
    try:
        target = f"oci://{registry.address}/{REPO_PATH}:1.0.0"
        publish(PublishOptions(archive=versions[0], target=target))
        wheel, digest = next((n, d) for n, d in _digests(versions[0]).items() if n.startswith("wheels/"))
        data = registry.blob_file(digest)
        data.write_bytes(bytes(b ^ 0x5A for b in data.read_bytes()))  # same length, other bytes
        out = tmp_path / "out.pex"
        code, _out, err = cli(capsys, "pull", target, "-o", str(out))
        assert code == 1, err
        assert digest in err and wheel in err and "wrong bytes" in err
        assert not out.exists()
        prefix = tmp_path / "host"
        code, _out, err = cli(capsys, "install", target, "--prefix", str(prefix), "--root", str(keys / "1.root.json"))
        assert code == 1 and digest in err
        assert not (prefix / "current").exists()
    finally:
        registry.stop()


@pytest.fixture()
def tls_registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    """docker-registry with TLS (a CA made here) and htpasswd basic auth: user chiron, password s3cret."""
    if shutil.which("htpasswd") is None:
        pytest.skip("NO htpasswd: .ci/run installs apache2-utils")
    ca, cert, key = make_tls(tmp_path / "tls")
    htpasswd = tmp_path / "htpasswd"
    line = subprocess.run(["htpasswd", "-Bbn", "chiron", "s3cret"], capture_output=True, text=True, check=True)
    htpasswd.write_text(line.stdout.strip() + "\n")
    registry = start_registry(tmp_path / "reg", htpasswd, (cert, key))
    yield registry, ca
    registry.stop()


def _authfile(path: Path, host: str, password: str) -> Path:
    token = base64.b64encode(f"chiron:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def test_tls_registry_with_credentials(
    tls_registry, versions: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    registry, ca = tls_registry
    home = tmp_path / "home"
    home.mkdir()
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    target = f"oci://{registry.address}/{REPO_PATH}:1.0.0"
    good = _authfile(tmp_path / "auth.json", registry.address, "s3cret")
    code, stdout, err = cli(
        capsys, "publish", str(versions[0]), target, "--authfile", str(good), "--ca-file", str(ca), "--images", "skip"
    )
    assert code == 0, err
    assert "published demo 1.0.0" in stdout
    # The default search finds the containers auth file; the pull is byte-identical.
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(good))
    out = tmp_path / "out.pex"
    code, _out, err = cli(capsys, "pull", target, "-o", str(out), "--ca-file", str(ca))
    assert code == 0, err
    assert out.read_bytes() == versions[0].read_bytes()
    # Without the site's CA: one line that says which option fixes it.
    code, _out, err = cli(capsys, "pull", target, "-o", str(tmp_path / "x.pex"))
    assert code == 3 and "not trusted" in err and "--ca-file" in err
    assert len(err.strip().splitlines()) == 1
    # A wrong password: named with the file it came from, never shown.
    bad = _authfile(tmp_path / "bad.json", registry.address, "wrong-password")
    code, _out, err = cli(
        capsys, "pull", target, "-o", str(tmp_path / "x.pex"), "--ca-file", str(ca), "--authfile", str(bad)
    )
    assert code == 3 and "refused the credentials" in err and str(bad) in err
    assert "wrong-password" not in err and base64.b64encode(b"chiron:wrong-password").decode() not in err
    # No credentials anywhere.
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    code, _out, err = cli(capsys, "pull", target, "-o", str(tmp_path / "x.pex"), "--ca-file", str(ca))
    assert code == 3 and "requires credentials" in err and "--authfile" in err
    assert not (tmp_path / "x.pex").exists()


def test_images_pushed_alongside_are_seen_by_skopeo_and_docker(
    image_appliance: Path, engine, oci_registry: LocalRegistry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    result = publish(PublishOptions(archive=image_appliance, target=f"oci://{oci_registry.address}/team/svc"))
    info = {i["ref"].rsplit("/", 1)[1]: i for i in inspect_archive(image_appliance)["images"]}
    digest = info["app:1"]["manifests"]["linux/amd64"]
    assert f"{oci_registry.address}/app@{digest}" in result.images
    assert f"{oci_registry.address}/app:1" in result.images
    seen = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{oci_registry.address}/app:1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(seen.stdout)["Digest"] == digest
    ref = f"{oci_registry.address}/app@{digest}"
    pulled = subprocess.run(["docker", "pull", ref], capture_output=True, text=True)
    try:
        assert pulled.returncode == 0, pulled.stderr
        image_id = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True, check=True
        ).stdout.strip()
        manifest = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], capture_output=True, check=True
        ).stdout
        assert image_id == json.loads(manifest)["config"]["digest"]
    finally:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


class CuttingProxy:
    """An HTTP proxy to a registry that breaks off the download of one blob after ``after`` bytes (a
    network that fails mid-transfer)."""

    def __init__(self, upstream: str, digest: str, after: int) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                conn = http.client.HTTPConnection(upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET" and self.path.endswith(digest):
                    self.wfile.write(body[:after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_interrupted_pull_resumes(
    published: dict[str, Any], versions: tuple[Path, Path], oci_registry: LocalRegistry, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    regions = {name: (length, f"sha256:{sha}") for name, _o, length, sha in extents(versions[0])}
    size, digest = regions["_archive/tool.zip"]  # the largest blob
    after = 1 << 20
    proxy = CuttingProxy(oci_registry.address, digest, after)
    staging, out = tmp_path / "staging", tmp_path / "out.pex"
    try:
        code, _out, err = cli(
            capsys, "pull", f"oci://{proxy.address}/{REPO_PATH}:1.0.0", "-o", str(out), "--staging", str(staging)
        )
    finally:
        proxy.close()
    assert code == 3, err
    assert "broke off" in err and "run the same command again" in err
    partial = staging / "blobs" / "sha256" / f"{digest[7:]}.partial"
    assert partial.stat().st_size == after and not out.exists()
    mark = len(oci_registry.requests("GET"))
    code, stdout, err = cli(
        capsys, "pull", f"{published['base']}:1.0.0", "-o", str(out), "--staging", str(staging), "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["resumed_bytes"] == after
    assert out.read_bytes() == versions[0].read_bytes()
    resumed = [(status, n) for d, status, n in _gets(oci_registry, mark) if d == digest]
    assert resumed == [(206, size - after)]  # only the rest was fetched


def test_mirror_refresh_publishes_each_new_version(
    tmp_path: Path, keys: Path, upstream, tool_wheels: Path, seeded, oci_registry: LocalRegistry, capsys
) -> None:  # type: ignore[no-untyped-def]
    from helpers import make_wheel

    spec = write_spec(tmp_path / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])
    store = seeded(tmp_path / "store")
    target = f"oci://{oci_registry.address}/team/mirrored"
    argv = ["mirror", "refresh", str(spec), "--store", str(store), "--tool-wheels", str(tool_wheels)]
    argv += ["--publish", target, "--publish-tag", "latest", "--json"]
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    first = json.loads(stdout)
    assert first["published"]["tags"] == [f"1.0.0-{first['metadata_version']}", "latest"]
    make_wheel(upstream.directory, "beta", "1.1")  # upstream moves on: the next refresh signs N+1
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    second = json.loads(stdout)
    assert second["changed"] and second["metadata_version"] == first["metadata_version"] + 1
    assert 0 < second["published"]["uploaded_bytes"] < second["size"] // 10  # the tool zip was there already
    out = tmp_path / "latest.pex"
    code, _out, err = cli(capsys, "pull", f"{target}:latest", "-o", str(out), "--root", str(keys / "1.root.json"))
    assert code == 0, err
    assert out.read_bytes() == Path(second["appliance"]).read_bytes()
