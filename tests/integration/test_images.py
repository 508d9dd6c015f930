"""Container images: built here from images/, served by a real registry on 127.0.0.1 and a real
Docker Engine (no bridge network; containers use host networking), packed as one OCI layout."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chiron.archive.reader import read_layout
from chiron.engines import host
from chiron.engines.inspect import inspect_archive
from chiron.engines.verify import verify

from conftest import APP, BASE, do_build, start_registry
from conftest import image_spec as _spec
from conftest import images_toml as _images_toml
from helpers import LocalRegistry

REPO = Path(__file__).resolve().parents[2]


def _start_registry(tmp: Path, htpasswd: Path | None = None) -> tuple[str, LocalRegistry]:
    """Debian's docker-registry on a free loopback port, storing under ``tmp``; with ``htpasswd``,
    every request needs basic auth by a user of that file."""
    served = start_registry(tmp, htpasswd)
    return served.address, served


@pytest.fixture()
def enclave_registry(engine, tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "enclave").mkdir()
    address, proc = _start_registry(tmp_path / "enclave")
    yield address
    proc.stop()


def test_build_from_registry_stores_shared_layers_once(image_appliance: Path, registry: str) -> None:
    report = verify(image_appliance)
    assert report.ok, report.problems
    info = inspect_archive(image_appliance)
    images = {i["ref"]: i for i in info["images"]}
    assert set(images) == {f"{registry}/busybox:1", f"{registry}/app:1"}
    for image in images.values():
        assert image["digest"].startswith("sha256:") and image["platforms"] == ["linux/amd64"]
    layout = read_layout(image_appliance)
    blobs = [m.name for m in layout.members if m.name.startswith("images/blobs/")]
    assert len(blobs) == len(set(blobs))
    # app = busybox base layer + one more: the base layer is one member, counted as shared bytes.
    data = image_appliance.read_bytes()

    def member_json(name: str) -> dict:  # type: ignore[type-arg]
        m = layout.member(name)
        assert m is not None
        return json.loads(data[m.offset : m.offset + m.length])

    layers = {}
    for ref, image in images.items():
        manifest = member_json("images/blobs/sha256/" + image["manifests"]["linux/amd64"].split(":")[1])
        layers[ref] = [d["digest"] for d in manifest["layers"]]
    base, app = layers[f"{registry}/busybox:1"], layers[f"{registry}/app:1"]
    assert len(app) == len(base) + 1 and app[: len(base)] == base
    assert info["images_shared_bytes"] > 0
    # Every blob is a signed target: verify hashed them all.
    assert all(n in report.targets_meta for n in blobs)


def test_sbom_lists_the_images(image_appliance: Path, registry: str) -> None:
    info = inspect_archive(image_appliance)
    m = read_layout(image_appliance).member("sbom/cyclonedx.json")
    assert m is not None
    doc = json.loads(image_appliance.read_bytes()[m.offset : m.offset + m.length])
    containers = {c["name"]: c for c in doc["components"] if c["type"] == "container"}
    assert sorted(containers) == sorted(i["ref"] for i in info["images"])
    for image in info["images"]:
        c = containers[image["ref"]]
        repository = image["ref"].rsplit(":", 1)[0]
        assert c["version"] == image["digest"] and c["purl"] == c["bom-ref"]
        assert c["purl"].startswith(f"pkg:oci/{repository.rsplit('/', 1)[1]}@sha256")
        assert f"repository_url={repository}" in c["purl"] and repository.startswith(registry)
        manifests = {p["name"].removeprefix("chiron:manifest:"): p["value"] for p in c["properties"]}
        assert manifests == image["manifests"]
    assert info["sbom"]["components"] == {"container": 2, "library": 1}


def test_tampered_blob_is_rejected(image_appliance: Path, tmp_path: Path) -> None:
    layout = read_layout(image_appliance)
    blob = max((m for m in layout.members if m.name.startswith("images/blobs/")), key=lambda m: m.length)
    data = bytearray(image_appliance.read_bytes())
    data[blob.offset + blob.length // 2] ^= 0x01
    bad = tmp_path / "bad.pex"
    bad.write_bytes(bytes(data))
    report = verify(bad)
    assert report.problems == [f"member {blob.name}: sha256 does not match the signed targets (modified)"]


def test_build_from_local_engine(local_images, keys: Path, index, tool_wheels: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(tmp_path / "s", keys, index.url, _images_toml([APP], source="docker"))
    out = do_build(spec, tmp_path / "local.pex", tool_wheels, tmp_path / "cache").output
    assert verify(out).ok
    (image,) = inspect_archive(out)["images"]
    assert image["ref"] == APP and image["size"] > 0


def test_install_loads_images_and_they_run(
    image_appliance: Path, engine, registry: str, keys: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ref = f"{registry}/app:1"
    for r in (ref, f"{registry}/busybox:1"):
        with contextlib.suppress(Exception):
            engine.images.remove(r, force=True)
    result = host.install(
        host.InstallOptions(archive=image_appliance, prefix=tmp_path / "p", root_file=keys / "1.root.json")
    )
    assert any("loaded 2 image(s)" in n for n in result.notices), result.notices
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", ref], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "hello from an air-gapped container"


def test_no_engine_carries_on_unless_required(
    image_appliance: Path, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    result = host.install(
        host.InstallOptions(archive=image_appliance, prefix=tmp_path / "p", root_file=keys / "1.root.json")
    )
    assert any("images not loaded: no Docker Engine is reachable" in n for n in result.notices)
    assert host.status(tmp_path / "p", None)["current"]["version"] == "1.0.0"
    skipped = host.install(
        host.InstallOptions(
            archive=image_appliance, prefix=tmp_path / "q", root_file=keys / "1.root.json", images="skip"
        )
    )
    assert any("left in the appliance" in n for n in skipped.notices)


def test_appliance_with_images_rebuilds_byte_identical(image_appliance: Path, tmp_path: Path) -> None:
    from chiron.engines.rebuild import rebuild

    spec_dir = image_appliance.parent / "s"
    result = rebuild(image_appliance, tmp_path / "r.pex", base=spec_dir, tool_wheels=None, cache_dir=tmp_path / "c")
    assert result.identical, result.differences


def test_build_from_an_oci_layout(local_images, keys: Path, index, tool_wheels: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--quiet", f"docker-daemon:{BASE}", f"oci:{layout}:{BASE}"], check=True)
    images = f'[[images]]\nref = "{BASE}"\nsource = "oci"\npath = "{layout}"\n'
    out = do_build(
        _spec(tmp_path / "s", keys, index.url, images), tmp_path / "oci.pex", tool_wheels, tmp_path / "cache"
    ).output
    assert verify(out).ok
    assert [i["ref"] for i in inspect_archive(out)["images"]] == [BASE]


def test_missing_platform_is_refused_not_mislabelled(
    registry: str, keys: Path, index, tool_wheels: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from chiron.errors import ArtifactError

    images = f'[[images]]\nref = "{registry}/busybox:1"\nplatforms = ["linux/arm64"]\n'
    with pytest.raises(ArtifactError, match=r"has no linux/arm64 variant \(the source provides linux/amd64\)"):
        do_build(_spec(tmp_path / "s", keys, index.url, images), tmp_path / "x.pex", tool_wheels, tmp_path / "c")
    assert not (tmp_path / "x.pex").exists()


def test_ref_pinned_by_digest(
    image_appliance: Path, registry: str, keys: Path, index, tool_wheels: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    digest = {i["ref"]: i["digest"] for i in inspect_archive(image_appliance)["images"]}[f"{registry}/busybox:1"]
    images = f'[[images]]\nref = "{registry}/busybox@{digest}"\n'
    out = do_build(
        _spec(tmp_path / "s", keys, index.url, images), tmp_path / "d.pex", tool_wheels, tmp_path / "c"
    ).output
    (image,) = inspect_archive(out)["images"]
    assert image["digest"] == digest and verify(out).ok


def test_only_exact_loopback_hosts_skip_tls() -> None:
    from chiron.sources.images import _is_loopback

    assert _is_loopback("127.0.0.1:5000/x:1") and _is_loopback("localhost/x") and _is_loopback("[::1]:5000/x")
    assert not _is_loopback("127.0.0.10:5000/x") and not _is_loopback("localhost.example.com/x")


def test_install_pushes_images_into_a_second_registry(
    image_appliance: Path, registry: str, enclave_registry: str, engine, keys: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    result = host.install(
        host.InstallOptions(
            archive=image_appliance,
            prefix=tmp_path / "p",
            root_file=keys / "1.root.json",
            images="push",
            registry=enclave_registry,
        )
    )
    assert any("pushed 2 image(s)" in n for n in result.notices), result.notices
    stored = {i["ref"]: i["manifests"]["linux/amd64"] for i in inspect_archive(image_appliance)["images"]}
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{enclave_registry}/app:1"],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == stored[f"{registry}/app:1"]
    # Pulled back with the docker CLI (the Engine treats loopback registries as plain http) and run.
    pulled = f"{enclave_registry}/app:1"
    subprocess.run(["docker", "pull", "-q", pulled], check=True, capture_output=True, timeout=120)
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", pulled], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "hello from an air-gapped container"


def test_layout_in_the_appliance_is_read_by_skopeo(image_appliance: Path, registry: str, tmp_path: Path) -> None:
    layout = read_layout(image_appliance)
    data = image_appliance.read_bytes()
    out = tmp_path / "layout"
    for m in layout.members:
        if m.name.startswith("images/"):
            dest = out / m.name.removeprefix("images/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data[m.offset : m.offset + m.length])
    info = subprocess.run(
        ["skopeo", "inspect", f"oci:{out}:{registry}/app:1"], capture_output=True, text=True, check=True
    )
    assert json.loads(info.stdout)["Architecture"] == "amd64"


def test_mirror_refresh_picks_up_a_moved_tag(
    registry: str, enclave_registry: str, keys: Path, index, tool_wheels: Path, seeded, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A tag that moves upstream is a change; an unmoved one is not (and its blobs are not fetched again)."""
    from chiron.engines import mirror

    def push(src: str) -> None:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{registry}/{src}",
                f"docker://{enclave_registry}/svc:1",
            ],
            check=True,
        )

    def refresh(epoch: int) -> mirror.RefreshResult:
        opts = mirror.RefreshOptions(
            store=store, spec=spec, tool_wheels=tool_wheels, source_date_epoch=epoch, show_progress=False
        )
        return mirror.refresh(opts)

    push("busybox:1")
    spec = _spec(tmp_path / "s", keys, index.url, _images_toml([f"{enclave_registry}/svc:1"]))
    store = seeded(tmp_path / "store")
    epoch = int(time.time()) - 600
    first = refresh(epoch)

    def layers() -> dict[str, int]:
        # skopeo rewrites the small manifest and config on every copy; layers it already has it skips.
        return {
            p.name: p.stat().st_mtime_ns
            for p in (store / "oci" / "blobs" / "sha256").iterdir()
            if p.stat().st_size > 16384
        }

    before = layers()
    same = refresh(epoch + 60)
    assert before and not same.changed and same.image_blobs_fetched == 0
    assert layers() == before

    push("app:1")  # the tag moves to another image
    moved = refresh(epoch + 120)
    assert moved.changed and moved.metadata_version == first.metadata_version + 1
    assert moved.image_blobs_fetched >= 2 and moved.image_bytes_fetched > 0  # the app layer, config, manifest
    changed = moved.changelog["images"]["changed"]  # type: ignore[index]
    assert [c["ref"] for c in changed] == [f"{enclave_registry}/svc:1"]
    assert changed[0]["from_digest"] != changed[0]["to_digest"]
    assert verify(moved.appliance, root_file=keys / "1.root.json").ok  # type: ignore[arg-type]

    # A store restored from that appliance holds its image blobs: refreshing it fetches no layer again.
    restored = seeded(tmp_path / "restored")
    mirror.restore(moved.appliance, restored, spec=spec, root_file=keys / "1.root.json")  # type: ignore[arg-type]
    store = restored
    again = refresh(epoch + 180)
    assert not again.changed and again.metadata_version == moved.metadata_version


# ---------------------------------------------------------------- registry credentials (issue 13, item 5)

USER, PASSWORD = "chiron", "pw-7c1e0d5b-never-on-a-command-line"


@pytest.fixture()
def auth_registry(local_images, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A registry that refuses every request without USER:PASSWORD (htpasswd, bcrypt), holding
    the busybox image."""
    if shutil.which("htpasswd") is None:
        pytest.skip("NO htpasswd: install apache2-utils")
    (tmp_path / "auth").mkdir()
    htpasswd = tmp_path / "auth" / "htpasswd"
    line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True).stdout
    htpasswd.write_text(line.strip() + "\n")
    address, proc = _start_registry(tmp_path / "auth", htpasswd)
    dest = f"docker://{address}/busybox:1"
    src = f"docker-daemon:{local_images[0]}"
    anonymous = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", src, dest], capture_output=True)
    assert anonymous.returncode != 0  # the registry really requires the credentials
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", f"{USER}:{PASSWORD}", src, dest],
        check=True,
    )
    yield address
    proc.stop()


@pytest.fixture()
def skopeo_spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``skopeo`` first on PATH that records each call's argv (and the modes of any auth file it is
    given, while it exists) in a JSON-lines file, then runs the real skopeo."""
    real = shutil.which("skopeo")
    assert real is not None
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    log = spy_dir / "calls.jsonl"
    (spy_dir / "skopeo").write_text(
        f"""#!{sys.executable}
import json, os, stat, sys
modes = {{}}
for flag, value in zip(sys.argv, sys.argv[1:]):
    if flag in ("--authfile", "--src-authfile", "--dest-authfile"):
        modes[value] = [stat.S_IMODE(os.stat(value).st_mode), stat.S_IMODE(os.stat(os.path.dirname(value)).st_mode)]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "modes": modes}}) + "\\n")
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""
    )
    (spy_dir / "skopeo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{spy_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _calls(log: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in log.read_text().splitlines()]


def _assert_secret_only_in_private_auth_files(calls: list[dict], flag: str) -> None:  # type: ignore[type-arg]
    assert calls, "skopeo was never run"
    for call in calls:
        argv = " ".join(call["argv"])
        assert PASSWORD not in argv and "--creds" not in argv and "-creds" not in argv, argv
    authfiles = [path for call in calls for path in call["modes"]]
    assert any(flag in call["argv"] for call in calls), calls
    assert authfiles and all(call["modes"][p] == [0o600, 0o700] for call in calls for p in call["modes"])
    assert not any(Path(p).exists() or Path(p).parent.exists() for p in authfiles)  # removed afterwards


def test_build_fetches_with_credentials_through_a_private_auth_file(
    auth_registry: str, skopeo_spy: Path, keys: Path, index, tool_wheels: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ref = f"{auth_registry}/busybox:1"
    toml = f'[[images]]\nref = "{ref}"\ncredentials_env = "CHIRON_TEST_REGISTRY"\n'
    spec = _spec(tmp_path / "s", keys, index.url, toml)
    monkeypatch.setenv("CHIRON_TEST_REGISTRY", f"{USER}:{PASSWORD}")
    out = do_build(spec, tmp_path / "auth.pex", tool_wheels, tmp_path / "cache").output
    assert verify(out).ok
    assert [i["ref"] for i in inspect_archive(out)["images"]] == [ref]
    calls = _calls(skopeo_spy)
    assert [c["argv"][1] for c in calls][:1] == ["inspect"] and "--authfile" in calls[0]["argv"]
    _assert_secret_only_in_private_auth_files(calls, "--src-authfile")
    assert PASSWORD.encode() not in out.read_bytes()


def test_bad_credentials_fail_the_build_without_showing_them(
    auth_registry: str, skopeo_spy: Path, keys: Path, index, tool_wheels: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from chiron.errors import EnvironmentProblem, UsageError

    toml = f'[[images]]\nref = "{auth_registry}/busybox:1"\ncredentials_env = "CHIRON_TEST_REGISTRY"\n'
    spec = _spec(tmp_path / "s", keys, index.url, toml)
    monkeypatch.setenv("CHIRON_TEST_REGISTRY", PASSWORD)  # no USER: part
    with pytest.raises(UsageError, match="CHIRON_TEST_REGISTRY does not hold USER:PASSWORD") as bad:
        do_build(spec, tmp_path / "a.pex", tool_wheels, tmp_path / "cache")
    assert PASSWORD not in bad.value.diagnostics()
    monkeypatch.setenv("CHIRON_TEST_REGISTRY", f"{USER}:wrong-{PASSWORD}")
    with pytest.raises(EnvironmentProblem, match="skopeo failed") as wrong:
        do_build(spec, tmp_path / "b.pex", tool_wheels, tmp_path / "cache")
    assert PASSWORD not in wrong.value.diagnostics()
    assert not (tmp_path / "a.pex").exists() and not (tmp_path / "b.pex").exists()
    _assert_secret_only_in_private_auth_files(_calls(skopeo_spy), "--authfile")  # resolving the tag failed


def test_install_pushes_with_credentials_through_a_private_auth_file(
    image_appliance: Path, auth_registry: str, skopeo_spy: Path, keys: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from chiron.engines.verify import verified
    from chiron.errors import EnvironmentProblem
    from chiron.sources import images as _images

    images = inspect_archive(image_appliance)["images"]
    # Without credentials the registry refuses the push (skopeo's own login holds none here).
    monkeypatch.delenv(_images.REGISTRY_CREDENTIALS_ENV, raising=False)
    with (
        verified(image_appliance, root_file=keys / "1.root.json") as report,
        pytest.raises(EnvironmentProblem, match="skopeo failed"),
    ):
        _images.push_to_registry(report.verified.read, images, "linux/amd64", auth_registry)
    monkeypatch.setenv(_images.REGISTRY_CREDENTIALS_ENV, f"{USER}:{PASSWORD}")
    result = host.install(
        host.InstallOptions(
            archive=image_appliance,
            prefix=tmp_path / "p",
            root_file=keys / "1.root.json",
            images="push",
            registry=f"{auth_registry}/enclave",
        )
    )
    assert any("pushed 2 image(s)" in n for n in result.notices), result.notices
    stored = {i["ref"].rsplit("/", 1)[1]: i["manifests"]["linux/amd64"] for i in images}
    raw = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            f"{USER}:{PASSWORD}",
            f"docker://{auth_registry}/enclave/app:1",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == stored["app:1"]
    pushes = [c for c in _calls(skopeo_spy) if "--creds" not in c["argv"]]  # the check above is the test's own
    _assert_secret_only_in_private_auth_files([c for c in pushes if "--dest-authfile" in c["argv"]], "--dest-authfile")
    assert len([c for c in pushes if "--dest-authfile" in c["argv"]]) == 2


def test_auth_file_is_private_and_removed_even_on_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import base64
    import stat

    from chiron.errors import UsageError
    from chiron.sources.images import auth_file, credentials_from_env

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("CREDS", f"{USER}:{PASSWORD}")
    creds = credentials_from_env("CREDS", "image x", required=True)
    seen: list[Path] = []
    with pytest.raises(RuntimeError), auth_file("registry.example:5000", creds) as path:
        assert path is not None and path.parent.parent == tmp_path
        seen.append(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        auths = json.loads(path.read_text())["auths"]
        assert base64.b64decode(auths["registry.example:5000"]["auth"]).decode() == f"{USER}:{PASSWORD}"
        raise RuntimeError("skopeo blew up")
    assert seen and not seen[0].parent.exists()
    with auth_file("registry.example", None) as nothing:
        assert nothing is None
    monkeypatch.delenv("CREDS")
    assert credentials_from_env("CREDS", "registry r", required=False) is None
    with pytest.raises(UsageError, match="registry r: environment variable CREDS is not set"):
        credentials_from_env("CREDS", "registry r", required=True)


@pytest.mark.parametrize("registry", ["https://registry.example", "", "/prefix", "reg istry:5000"])
def test_push_refuses_a_registry_that_is_not_host_port_prefix(registry: str) -> None:
    from chiron.errors import UsageError
    from chiron.sources.images import push_to_registry

    def read(name: str) -> bytes:
        raise AssertionError(f"nothing may be read: {name}")

    with pytest.raises(UsageError, match=r"--registry .*not HOST\[:PORT\]\[/PREFIX\]"):
        push_to_registry(
            read, [{"ref": "a/b:1", "manifests": {"linux/amd64": "sha256:" + "0" * 64}}], "linux/amd64", registry
        )
