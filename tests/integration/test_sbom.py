"""The CycloneDX SBOM every appliance carries (sbom/cyclonedx.json): signed, valid CycloneDX 1.6,
complete and correct for the lock's wheels, reproducible, and summarised by inspect."""

from __future__ import annotations

import hashlib
import io
import json
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from chiron.archive.reader import read_layout
from chiron.cli import main
from chiron.engines.inspect import inspect_archive
from chiron.engines.verify import verify
from chiron.errors import ArtifactError
from chiron.sources import sbom as _sbom
from chiron.sources import wheelmeta as _wheelmeta
from chiron.sources.images import PackedImage
from chiron.sources.lock import Artifact, Lock, LockedPackage

from conftest import do_build
from helpers import assert_cli_verify_fails, make_wheel, rewrite_archive

MEMBER = "sbom/cyclonedx.json"


def _member(archive: Path, name: str) -> bytes:
    m = read_layout(archive).member(name)
    assert m is not None, name
    return archive.read_bytes()[m.offset : m.offset + m.length]


def _sbom_of(archive: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_member(archive, MEMBER))
    return doc


def _assert_valid(data: bytes) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode())
    assert error is None, error


def _props(component: dict[str, Any], name: str) -> list[str]:
    return [p["value"] for p in component.get("properties", []) if p["name"] == name]


# ---------------------------------------------------------------- in a built appliance


def test_sbom_is_a_signed_target(appliance: Path, keys: Path) -> None:
    report = verify(appliance, root_file=keys / "1.root.json")
    assert report.ok, report.problems
    target = report.targets_meta[MEMBER]
    assert target["custom"]["kind"] == "sbom"
    assert target["sha256"] == hashlib.sha256(_member(appliance, MEMBER)).hexdigest()
    # Right after the requirements files, before the tool members and the wheels.
    names = [m.name for m in read_layout(appliance).members]
    assert names.index(MEMBER) == names.index("lock/requirements-cp312.txt") + 1
    assert names[names.index(MEMBER) + 1] == "_archive/tool-members.json"


def _flipped(appliance: Path, out: Path) -> Path:
    m = read_layout(appliance).member(MEMBER)
    assert m is not None
    data = bytearray(appliance.read_bytes())
    data[m.offset + m.length // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def _relicensed(appliance: Path, out: Path) -> Path:
    """What an attacker who knows the format would do: a plausible SBOM, the index and footer fixed."""
    body = _member(appliance, MEMBER).replace(b'"MIT"', b'"GPL-3.0-only"')
    return rewrite_archive(appliance, out, replace={MEMBER: body})


@pytest.mark.parametrize(
    ("tamper", "expect"),
    [
        (_flipped, f"member {MEMBER}: sha256 does not match the signed targets (modified)"),
        (_relicensed, f"member {MEMBER}: is "),
    ],
    ids=["flipped byte", "licence rewritten"],
)
def test_tampered_sbom_is_rejected(
    tamper: Any, expect: str, appliance: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tamper(appliance, tmp_path / "tampered.pex")
    assert_cli_verify_fails(bad, appliance, keys, capsys, expect)


def test_sbom_is_valid_cyclonedx_1_6(appliance: Path) -> None:
    data = _member(appliance, MEMBER)
    _assert_valid(data)
    doc = json.loads(data)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
    manifest = json.loads(_member(appliance, "appliance.json"))
    meta = doc["metadata"]
    assert meta["component"]["type"] == "application"
    assert (meta["component"]["name"], meta["component"]["version"]) == (manifest["name"], manifest["version"])
    assert meta["timestamp"] == manifest["created"].replace("Z", "+00:00")
    assert [(t["name"], t["version"]) for t in meta["tools"]["components"]] == [("chiron", manifest["chiron_version"])]


def test_sbom_lists_every_wheel_with_hash_and_licence(appliance: Path) -> None:
    doc = _sbom_of(appliance)
    lock = tomllib.loads(_member(appliance, "lock/pylock.toml").decode())
    by_name = {c["name"]: c for c in doc["components"]}
    assert sorted(by_name) == sorted(p["name"] for p in lock["packages"]) == ["alpha", "beta", "gamma"]
    for pkg in lock["packages"]:
        c = by_name[pkg["name"]]
        assert c["type"] == "library" and c["version"] == pkg["version"]
        assert c["purl"] == c["bom-ref"] == f"pkg:pypi/{pkg['name']}@{pkg['version']}"
        files = {w["name"]: w["hashes"]["sha256"] for w in pkg["wheels"]}
        assert sorted(_props(c, "chiron:file")) == sorted(files)
        assert sorted(h["content"] for h in c["hashes"]) == sorted(files.values())
        assert {h["alg"] for h in c["hashes"]} == {"SHA-256"}
        for fname, sha in files.items():  # the hashes are those of the packed members themselves
            assert hashlib.sha256(_member(appliance, f"wheels/{fname}")).hexdigest() == sha
    # alpha pulls beta>=1: the index's newest is 1.1, licensed Apache-2.0; the others say MIT.
    licences = {n: [entry["license"]["id"] for entry in c["licenses"]] for n, c in by_name.items()}
    assert licences == {"alpha": ["MIT"], "beta": ["Apache-2.0"], "gamma": ["MIT"]}
    # gamma has one wheel per CPython; every package serves both environments.
    assert len(by_name["gamma"]["hashes"]) == 2
    assert {n: _props(c, "chiron:environments") for n, c in by_name.items()} == {n: ["cp311,cp312"] for n in by_name}
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert sorted(deps[doc["metadata"]["component"]["bom-ref"]]) == sorted(c["bom-ref"] for c in doc["components"])


def test_sbom_is_reproducible(good_spec: Path, tool_wheels: Path, session_cache: Path, tmp_path: Path) -> None:
    epoch = int(time.time()) // 60 * 60
    a = do_build(good_spec, tmp_path / "a.pex", tool_wheels, session_cache, epoch=epoch).output
    b = do_build(good_spec, tmp_path / "b.pex", tool_wheels, session_cache, epoch=epoch).output
    c = do_build(good_spec, tmp_path / "c.pex", tool_wheels, session_cache, epoch=epoch + 60).output
    assert _member(a, MEMBER) == _member(b, MEMBER)
    # Another build time: another timestamp, hence (derived from the content) another serial number.
    da, dc = _sbom_of(a), _sbom_of(c)
    assert da["serialNumber"] != dc["serialNumber"] and da["serialNumber"].startswith("urn:uuid:")
    for doc in (da, dc):
        del doc["serialNumber"], doc["metadata"]["timestamp"]
    assert da == dc


def test_inspect_summarises_the_sbom(appliance: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = inspect_archive(appliance)
    assert info["sbom"] == {
        "spec_version": "1.6",
        "components": {"library": 3},
        "licences": {"Apache-2.0": 1, "MIT": 2},
        "sha256": hashlib.sha256(_member(appliance, MEMBER)).hexdigest(),
    }
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(appliance)])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert f"SBOM: {MEMBER} (CycloneDX 1.6), components: 3 library\n  sha256 {info['sbom']['sha256']}" in out
    assert "package licences: Apache-2.0 (1), MIT (2)" in out


def test_inspect_without_an_sbom(appliance: Path, tmp_path: Path) -> None:
    """Appliances built before the SBOM existed: inspect says null rather than failing."""
    old = rewrite_archive(appliance, tmp_path / "old.pex", remove=(MEMBER,))
    assert inspect_archive(old)["sbom"] is None


# ---------------------------------------------------------------- make() and the wheel metadata, directly


def _art(path: Path) -> Artifact:
    data = path.read_bytes()
    return Artifact(path.name, f"https://example.invalid/{path.name}", hashlib.sha256(data).hexdigest(), len(data))


def test_sdists_and_images(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "alpha", "1.0", license="Some Custom Licence")
    sdist = tmp_path / "delta-3.0.tar.gz"
    sdist.write_bytes(b"not read: sdists carry no METADATA the SBOM uses")
    aw, sd = _art(wheel), _art(sdist)
    lock = Lock(
        packages=[
            LockedPackage("alpha", "1.0", None, {aw.filename: aw}, {"cp311"}),
            LockedPackage("delta", "3.0", None, {sd.filename: sd}, {"cp311"}),
        ],
        selection={"cp311": {"alpha": aw, "delta": sd}},
    )
    digest, amd, arm = ("sha256:" + c * 64 for c in "abc")
    image = PackedImage("127.0.0.1:5000/team/App:1.2", digest, {"linux/arm64": arm, "linux/amd64": amd})
    manifest = {"name": "demo", "version": "2.0", "description": "", "created": "2025-01-02T03:04:05Z"}
    data = _sbom.make(manifest, lock, {aw.filename: wheel, sd.filename: sdist}, [image])
    _assert_valid(data)
    assert data == _sbom.make(manifest, lock, {aw.filename: wheel, sd.filename: sdist}, [image])
    doc = json.loads(data)
    by_name = {c["name"]: c for c in doc["components"]}
    assert by_name["alpha"]["licenses"] == [{"license": {"name": "Some Custom Licence"}}]
    assert "licenses" not in by_name["delta"] and _props(by_name["delta"], "chiron:file") == [sd.filename]
    assert [h["content"] for h in by_name["delta"]["hashes"]] == [sd.sha256]
    c = by_name[image.ref]
    assert (c["type"], c["version"]) == ("container", digest)
    assert c["purl"].startswith("pkg:oci/app@sha256")
    assert "repository_url=127.0.0.1:5000/team/App" in c["purl"] and "tag=1.2" in c["purl"]
    assert _props(c, "chiron:manifest:linux/amd64") == [amd] and _props(c, "chiron:manifest:linux/arm64") == [arm]
    summary = _sbom.summary(data)
    assert summary["components"] == {"container": 1, "library": 2}
    assert summary["licences"] == {"Some Custom Licence": 1, "unknown": 1}


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def _meta(headers: str) -> bytes:
    return _zip({"x-1.0.dist-info/METADATA": f"Metadata-Version: 2.4\nName: x\nVersion: 1.0\n{headers}\nBody\n"})


@pytest.mark.parametrize(
    ("headers", "licence"),
    [
        ("License-Expression: MIT OR Apache-2.0\nLicense: ignored", "MIT OR Apache-2.0"),
        ("License: BSD-3-Clause\nClassifier: License :: OSI Approved :: MIT License", "BSD-3-Clause"),
        ("License: line one\n  line two\nClassifier: License :: OSI Approved :: MIT License", "MIT License"),
        ("Classifier: Programming Language :: Python", ""),
    ],
)
def test_wheel_licence(headers: str, licence: str) -> None:
    assert _wheelmeta.licence(_wheelmeta.read_metadata(_meta(headers))) == licence


def test_spdx_expression_or_name(tmp_path: Path) -> None:
    def licences(headers: str) -> list[dict[str, Any]]:
        path = tmp_path / "x-1.0-py3-none-any.whl"
        path.write_bytes(_meta(headers))
        art = _art(path)
        lock = Lock([LockedPackage("x", "1.0", None, {art.filename: art})], {"e": {"x": art}})
        manifest = {"name": "n", "version": "1", "created": "2025-01-01T00:00:00Z"}
        doc = json.loads(_sbom.make(manifest, lock, {art.filename: path}, []))
        return list(doc["components"][0].get("licenses", []))

    assert licences("License-Expression: MIT OR Apache-2.0") == [{"expression": "MIT OR Apache-2.0"}]
    assert licences("License-Expression: not an (expression") == [{"license": {"name": "not an (expression"}}]
    assert licences("Summary: no licence at all") == []


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not a zip at all", "cannot read it as a wheel"),
        (_zip({"x/__init__.py": ""}), "has no *.dist-info/METADATA"),
        (_zip({"x/_vendor/y-1.0.dist-info/METADATA": "Name: y\n"}), "has no *.dist-info/METADATA"),
    ],
    ids=["not a zip", "no metadata", "only vendored metadata"],
)
def test_unreadable_wheel_metadata(data: bytes, problem: str) -> None:
    with pytest.raises(ArtifactError, match=r"^broken\.whl: ") as exc:
        _wheelmeta.read_metadata(data, "broken.whl")
    assert problem in exc.value.message


def test_summary_of_a_wheel() -> None:
    meta = _wheelmeta.read_metadata(_meta("Summary: A  small\n  thing, café"))
    assert _wheelmeta.summary(meta) == "A small thing, café"
