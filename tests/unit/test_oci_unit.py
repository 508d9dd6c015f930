"""The OCI pieces that need no registry: references, the artifact format, auth files, image repositories."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from chiron.core.text import canonical_json
from chiron.engines.oci import artifact
from chiron.engines.oci.images import image_repository
from chiron.errors import EnvironmentProblem, UsageError, VerificationError
from chiron.sources.oci import Reference, digest_of, fallback_tag, is_loopback, parse_reference
from chiron.sources.oci.auth import auth_files, load_credentials

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("oci://127.0.0.1:5000/team/demo", Reference("127.0.0.1:5000", "team/demo")),
        ("oci://reg.site/demo:1.0.0", Reference("reg.site", "demo", "1.0.0")),
        (f"oci://reg.site/a/b/c@sha256:{SHA}", Reference("reg.site", "a/b/c", None, f"sha256:{SHA}")),
        (f"oci://[::1]:5000/x-y_z.w:v1@sha256:{SHA}", Reference("[::1]:5000", "x-y_z.w", "v1", f"sha256:{SHA}")),
    ],
)
def test_references_parse(text: str, want: Reference) -> None:
    got = parse_reference(text)
    assert got == want
    assert str(got) == text


@pytest.mark.parametrize(
    "text",
    [
        "docker://reg/demo",
        "oci://reg",
        "oci://reg/",
        "oci://reg/Demo",  # repositories are lower case
        "oci://reg/demo:",
        "oci://reg/demo:-x",
        "oci://reg/demo@sha256:abc",
        "oci://reg//demo",
        "oci://reg/demo/../x",
        "oci://reg/demo:1 --insecure",
        "oci://user:pw@reg/demo",
    ],
)
def test_bad_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="not an OCI reference"):
        parse_reference(text)


def test_the_reference_names_a_digest_before_a_tag() -> None:
    assert Reference("h", "r", "t", f"sha256:{SHA}").reference == f"sha256:{SHA}"
    assert Reference("h", "r", "t").reference == "t"
    assert Reference("h", "r").reference == "latest"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.9.8.7", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("127.0.0.1.example:5000", False),
        ("localhost.example", False),
        ("10.0.0.1:5000", False),
        ("reg.site", False),
    ],
)
def test_only_loopback_hosts_may_use_plain_http(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_fallback_tag_is_the_tag_schema() -> None:
    assert fallback_tag(f"sha256:{SHA}") == f"sha256-{SHA}"


# ---------------------------------------------------------------- the artifact format

INFO = {
    "name": "demo",
    "version": "1.0+local",
    "created": "2026-01-01T00:00:00Z",
    "tool_format": "pex",
    "root_sha256": "cd" * 32,
    "metadata_version": 7,
}
REGIONS = [
    ("_archive/shebang", 0, 23, "01" * 32),
    ("appliance.json", 23, 100, "02" * 32),
    ("wheels/a.whl", 123, 50, "03" * 32),
    ("files/same", 173, 50, "03" * 32),  # the same bytes as the wheel: one blob, listed twice
    ("_archive/index", 223, 164, "04" * 32),
    ("_archive/tool.zip", 387, 1000, "05" * 32),
]


def _artifact() -> tuple[dict, bytes]:  # type: ignore[type-arg]
    config = artifact.config_bytes(INFO, 1387, "ef" * 32)
    return json.loads(artifact.manifest_bytes(REGIONS, config, INFO)), config


def test_manifest_round_trip_keeps_file_order_and_names() -> None:
    manifest, config = _artifact()
    assert manifest["artifactType"] == artifact.ARTIFACT_TYPE
    assert manifest["config"] == {"mediaType": artifact.CONFIG_TYPE, "digest": digest_of(config), "size": len(config)}
    assert manifest["annotations"][artifact.ROOT_SHA256] == "cd" * 32
    assert manifest["annotations"][artifact.METADATA_VERSION] == "7"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        artifact.SHEBANG_TYPE,
        artifact.MEMBER_TYPE,
        artifact.MEMBER_TYPE,
        artifact.MEMBER_TYPE,
        artifact.INDEX_TYPE,
        artifact.TOOL_TYPE,
    ]
    parsed = artifact.parse(manifest, config, "here")
    assert [(r.name, r.digest, r.size) for r in parsed.regions] == [(n, f"sha256:{s}", ln) for n, _o, ln, s in REGIONS]
    assert (parsed.name, parsed.version, parsed.size, parsed.sha256) == ("demo", "1.0+local", 1387, "ef" * 32)
    assert len(parsed.unique()) == 5


def test_the_same_appliance_gives_the_same_manifest() -> None:
    config = artifact.config_bytes(INFO, 1387, "ef" * 32)
    assert artifact.manifest_bytes(REGIONS, config, INFO) == artifact.manifest_bytes(list(REGIONS), config, dict(INFO))


def test_an_image_is_not_an_appliance() -> None:
    manifest, config = _artifact()
    image = {
        **manifest,
        "artifactType": None,
        "config": {**manifest["config"], "mediaType": "application/vnd.oci.image.config.v1+json"},
    }
    with pytest.raises(UsageError, match="not a chiron appliance"):
        artifact.parse(image, config, "oci://h/r:t")


@pytest.mark.parametrize(
    "damage",
    [
        lambda m, c: ({**m, "layers": []}, c),
        lambda m, c: ({**m, "layers": m["layers"][:-1]}, c),  # sizes no longer add up
        lambda m, c: ({**m, "layers": [{**m["layers"][0], "digest": "sha256:xyz"}, *m["layers"][1:]]}, c),
        lambda m, c: ({**m, "layers": [{**m["layers"][0], "size": -1}, *m["layers"][1:]]}, c),
        lambda m, c: ({**m, "layers": [{**m["layers"][0], "mediaType": "x"}, *m["layers"][1:]]}, c),
        lambda m, c: (m, b"not json"),
        lambda m, c: (m, canonical_json({**json.loads(c), "format": "other/1"})),
        lambda m, c: (m, canonical_json({**json.loads(c), "sha256": "nope"})),
        lambda m, c: (m, canonical_json({k: v for k, v in json.loads(c).items() if k != "size"})),
        lambda m, c: (m, canonical_json({**json.loads(c), "name": "demo\x1b[2J"})),
    ],
)
def test_malformed_artifacts_are_verification_errors(damage) -> None:  # type: ignore[no-untyped-def]
    manifest, config = damage(*_artifact())
    with pytest.raises(VerificationError, match="malformed chiron artifact"):
        artifact.parse(manifest, config, "here")


def test_region_names_from_the_registry_are_printed_only_when_safe() -> None:
    manifest, config = _artifact()
    layers = [{**layer, "annotations": {artifact.TITLE: "wheels/\x9b31mred"}} for layer in manifest["layers"]]
    parsed = artifact.parse({**manifest, "layers": layers}, config, "here")
    assert [r.name for r in parsed.regions] == [f"layer {n}" for n in range(len(layers))]


def test_config_descriptor_is_bounded() -> None:
    manifest, _config = _artifact()
    assert artifact.config_digest(manifest, "x")[1] == manifest["config"]["size"]
    with pytest.raises(VerificationError, match="not plausible"):
        artifact.config_digest({**manifest, "config": {**manifest["config"], "size": 1 << 30}}, "x")
    with pytest.raises(VerificationError, match="no valid config"):
        artifact.config_digest({**manifest, "config": "x"}, "x")


@pytest.mark.parametrize(
    ("version", "tag"), [("1.0.0", "1.0.0"), ("1.0+local", "1.0_local"), ("-rc", "v-rc"), (".x", "v.x")]
)
def test_tags_from_versions_follow_the_tag_grammar(version: str, tag: str) -> None:
    assert artifact.tag_for(version) == tag


def test_a_referrer_names_its_subject() -> None:
    layer = {"mediaType": artifact.SSHSIG_TYPE, "digest": f"sha256:{SHA}", "size": 3}
    raw = artifact.referrer_bytes((f"sha256:{SHA}", 10), artifact.SIGNATURE_TYPE, layer, {"k": "v"})
    doc = json.loads(raw)
    assert doc["subject"]["digest"] == f"sha256:{SHA}" and doc["artifactType"] == artifact.SIGNATURE_TYPE
    assert doc["config"]["digest"] == digest_of(b"{}")


@pytest.mark.parametrize(
    ("ref", "prefix", "want"),
    [
        ("127.0.0.1:5000/busybox:1", "", ("busybox", "1")),
        ("reg.site/team/app:2.0", "mirror", ("mirror/team/app", "2.0")),
        ("ubuntu", "", ("ubuntu", "latest")),
        (f"localhost/app@sha256:{SHA}", "", ("app", None)),
        (f"reg.site:5000/app:1@sha256:{SHA}", "/p/", ("p/app", "1")),
    ],
)
def test_image_repositories(ref: str, prefix: str, want: tuple[str, str | None]) -> None:
    assert image_repository(ref, prefix) == want


# ---------------------------------------------------------------- credentials


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_auth_files_are_searched_in_the_containers_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "explicit.json"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    assert auth_files(None) == [
        home / "explicit.json",
        home / "run" / "containers" / "auth.json",
        home / ".config" / "containers" / "auth.json",
        home / ".docker" / "config.json",
    ]
    assert auth_files(home / "given.json") == [home / "given.json"]


def test_the_first_file_naming_the_host_decides(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker = _write(home / ".docker" / "config.json", {"auths": {"https://reg.site/v1/": {"auth": _auth("d", "1")}}})
    podman = _write(home / ".config" / "containers" / "auth.json", {"auths": {"other.site": {"auth": _auth("p", "2")}}})
    got = load_credentials("reg.site", None)
    assert got.basic == _auth("d", "1") and str(docker) in got.source
    assert got.searched == (podman, docker)
    assert load_credentials("other.site", None).basic == _auth("p", "2")
    assert load_credentials("nobody.site", None).basic is None
    # localhost and 127.0.0.1 are one registry
    _write(podman, {"auths": {"localhost:5000": {"auth": _auth("l", "3")}}})
    assert load_credentials("127.0.0.1:5000", None).basic == _auth("l", "3")


def test_an_explicit_authfile_is_the_only_one(home: Path) -> None:
    _write(home / ".docker" / "config.json", {"auths": {"reg.site": {"auth": _auth("d", "1")}}})
    given = _write(home / "given.json", {"auths": {}})
    assert load_credentials("reg.site", given).basic is None
    with pytest.raises(UsageError, match="no such file"):
        load_credentials("reg.site", home / "missing.json")


@pytest.mark.parametrize("content", ["not json", "[]", '{"auths": []}'])
def test_a_broken_auth_file_is_named(home: Path, content: str) -> None:
    path = home / "auth.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=str(path)):
        load_credentials("reg.site", path)


def test_credential_helpers(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = home / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-test"
    helper.write_text('#!/bin/sh\nread host\necho "{\\"Username\\": \\"h\\", \\"Secret\\": \\"for-$host\\"}"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = _write(home / "auth.json", {"credHelpers": {"reg.site": "test", "gone.site": "missing"}})
    got = load_credentials("reg.site", path)
    assert got.basic == _auth("h", "for-reg.site") and "docker-credential-test" in got.source
    with pytest.raises(EnvironmentProblem, match=r"docker-credential-missing.*not installed"):
        load_credentials("gone.site", path)
