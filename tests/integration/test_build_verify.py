"""End-to-end: build appliances from a loopback index and verify them, in-process and as a program."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from chiron.archive.reader import read_layout
from chiron.engines.inspect import inspect_archive
from chiron.engines.verify import verify

from conftest import copy, do_build
from helpers import ENV_311, files_spec, write_spec

# Start of today: a fixed SOURCE_DATE_EPOCH for reproducibility whose 1-day expiry has not passed.
EPOCH = int(time.time()) // 86400 * 86400


def test_good_appliance_verifies_against_each_anchor(appliance: Path, keys: Path) -> None:
    root = keys / "1.root.json"
    fp = hashlib.sha256(root.read_bytes()).hexdigest()
    by_file = verify(appliance, root_file=root)
    by_hash = verify(appliance, root_sha256=fp.upper())
    tofu = verify(appliance)
    for report in (by_file, by_hash, tofu):
        assert report.ok, report.problems
        assert report.bytes_hashed > 0 and report.name == "demo" and report.version == "1.0.0"
        assert report.root_fingerprint == fp
    assert tofu.notices and "trust on first use" in tofu.notices[0]
    assert not by_file.notices and not by_hash.notices
    assert by_file.roles["targets"]["version"] == by_file.roles["timestamp"]["version"] > 1_700_000_000


def test_every_byte_is_accounted_for(appliance: Path) -> None:
    layout = read_layout(appliance)
    spans = sorted((m.offset, m.offset + m.length) for m in layout.members)
    assert spans[0][0] == len(layout.shebang)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == layout.index_offset
    assert layout.index_offset + layout.index_length + 64 == layout.zip_offset
    names = {m.name for m in layout.members}
    assert {
        "appliance.json",
        "lock/pylock.toml",
        "lock/requirements-cp311.txt",
        "lock/requirements-cp312.txt",
        "metadata/1.root.json",
        "metadata/targets.json",
        "wheels/alpha-1.0-py3-none-any.whl",
    } <= names


def test_lock_pins_each_environment(appliance: Path) -> None:
    layout = read_layout(appliance)
    data = appliance.read_bytes()
    m = layout.member("lock/pylock.toml")
    assert m is not None
    lock = tomllib.loads(data[m.offset : m.offset + m.length].decode())
    assert lock["lock-version"] == "1.0"
    envs = lock["tool"]["chiron"]["environments"]
    assert envs["cp311"] == envs["cp312"] == ["alpha==1.0", "beta==1.1", "gamma==2.0"]
    gamma = next(p for p in lock["packages"] if p["name"] == "gamma")
    assert sorted(w["name"] for w in gamma["wheels"]) == [
        "gamma-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        "gamma-2.0-cp312-cp312-manylinux_2_17_x86_64.whl",
    ]
    for pkg in lock["packages"]:
        for w in pkg["wheels"]:
            wm = layout.member(f"wheels/{w['name']}")
            assert wm is not None
            body = data[wm.offset : wm.offset + wm.length]
            assert hashlib.sha256(body).hexdigest() == w["hashes"]["sha256"] and len(body) == w["size"]
    req = layout.member("lock/requirements-cp312.txt")
    assert req is not None
    text = data[req.offset : req.offset + req.length].decode()
    assert "gamma==2.0 \\\n    --hash=sha256:" in text


def test_runs_as_a_program_and_verifies_itself(appliance: Path, pex_root: Path, keys: Path) -> None:
    proc = subprocess.run(
        [str(appliance), "verify", "--root", str(keys / "1.root.json"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["path"] == str(appliance.resolve())
    assert report["trust_anchor"] == "--root file"


def test_double_build_is_byte_identical(
    good_spec: Path, tool_wheels: Path, session_cache: Path, tmp_path: Path
) -> None:
    a = do_build(good_spec, tmp_path / "a" / "chiron.pex", tool_wheels, session_cache, epoch=EPOCH)
    b = do_build(good_spec, tmp_path / "b" / "chiron.pex", tool_wheels, session_cache, epoch=EPOCH)
    assert a.output.read_bytes() == b.output.read_bytes()
    assert a.signature.read_bytes() == b.signature.read_bytes()
    c = do_build(good_spec, tmp_path / "c" / "chiron.pex", tool_wheels, session_cache, epoch=EPOCH + 1)
    assert c.output.read_bytes() != a.output.read_bytes()


def test_rebuild_reuses_the_cache(
    tmp_path: Path,
    keys: Path,
    index,
    tool_wheels: Path,  # type: ignore[no-untyped-def]
) -> None:
    spec = write_spec(tmp_path / "s", keys=keys, index_url=index.url, requirements=["beta==1.0"])
    cache = tmp_path / "cache"
    before = index.file_requests()
    first = do_build(spec, tmp_path / "1.pex", tool_wheels, cache)
    assert first.downloaded == 1 and index.file_requests() > before
    # Lock it, then rebuild from the lock: no index request at all, the cache serves the wheel.
    from chiron.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["lock", str(spec), "-o", str(tmp_path / "s" / "pylock.toml")])
    assert exc.value.code == 0
    spec.write_text(spec.read_text().replace("[python]", '[python]\nlock = "pylock.toml"'))
    requests_before = sum(index.requests.values())
    second = do_build(spec, tmp_path / "2.pex", tool_wheels, cache)
    assert second.downloaded == 0 and second.reused == 1
    assert sum(index.requests.values()) == requests_before


def _python(version: str) -> str | None:
    """An interpreter of that version on this machine (pyenv's shims refuse non-global versions)."""
    import glob
    import shutil

    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}"))
    for cand in [*found, shutil.which(f"python{version}") or ""]:
        if cand and subprocess.run([cand, "-c", ""], capture_output=True).returncode == 0:
            return cand
    return None


def test_the_tool_runs_on_each_environments_python(appliance: Path, pex_root: Path, keys: Path) -> None:
    """The spec serves CPython 3.11 and 3.12: the tool zip carries compiled dependencies for both."""
    py312 = _python("3.12")
    if py312 is None:
        pytest.skip("NO PYTHON 3.12 on this machine to run the appliance with")
    proc = subprocess.run(
        [py312, str(appliance), "verify", "--root", str(keys / "1.root.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout


def test_shiv_format_builds_runs_and_verifies(
    good_spec: Path, tool_wheels: Path, session_cache: Path, tmp_path: Path, keys: Path
) -> None:
    out = tmp_path / "chiron.pyz"
    result = do_build(good_spec, out, tool_wheels, session_cache, fmt="shiv", epoch=EPOCH)
    assert read_layout(out).tool_format == "shiv"
    # shiv builds for the build interpreter only: the build says so for the spec's other Python.
    assert (
        result.notes and "--format pex" in result.notes[0] and "manylinux2014_x86_64-cp-3.12.0-cp312" in result.notes[0]
    )
    assert verify(out, root_file=keys / "1.root.json").ok
    env = dict(os.environ, SHIV_ROOT=str(tmp_path / "shiv-root"))
    proc = subprocess.run(
        [str(out), "verify", "--root", str(keys / "1.root.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout and str(out) in proc.stdout
    again = do_build(good_spec, tmp_path / "again.pyz", tool_wheels, session_cache, fmt="shiv", epoch=EPOCH)
    assert again.output.read_bytes() == out.read_bytes()


def test_inspect_reports_packages_roles_and_targets(appliance: Path, keys: Path) -> None:
    info = inspect_archive(appliance)
    assert info["name"] == "demo" and info["version"] == "1.0.0" and info["verified"] is False
    assert info["tool_format"] == "pex"
    names = {p["name"]: p for p in info["packages"]}
    assert names["gamma"]["environments"] == ["cp311", "cp312"]
    assert names["beta"]["version"] == "1.1"
    assert info["roles"]["targets"]["threshold"] == 1 and info["roles"]["timestamp"]["expires"]
    assert info["roles"]["root"]["key_types"] == ["ed25519"]
    assert info["root_fingerprint"] == hashlib.sha256((keys / "1.root.json").read_bytes()).hexdigest()
    assert info["targets"]["by_kind"]["wheel"]["count"] == 4


def test_no_private_key_is_packed(appliance: Path, keys: Path) -> None:
    data = appliance.read_bytes()
    assert b"PRIVATE KEY" not in data
    for pem in keys.glob("*.pem"):
        assert pem.read_bytes().strip().splitlines()[1] not in data
    pem_block = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/]{16}")
    with zipfile.ZipFile(appliance) as z:  # the tool code too, decompressed
        assert not [n for n in z.namelist() if pem_block.search(z.read(n))]


def test_tool_zip_carries_no_payload(appliance: Path) -> None:
    with zipfile.ZipFile(appliance) as z:
        names = z.namelist()
    assert not [n for n in names if n.startswith(("wheels/", "metadata/"))]
    assert "__main__.py" in names and "PEX-INFO" in names


def test_extra_files_are_signed_members(tmp_path: Path, keys: Path, index, tool_wheels: Path) -> None:  # type: ignore[no-untyped-def]
    spec = files_spec(tmp_path / "s", keys=keys, index_url=index.url, text="hello")
    out = do_build(spec, tmp_path / "f.pex", tool_wheels, tmp_path / "cache").output
    report = verify(out)
    assert report.ok
    assert read_layout(out).member("files/docs/notes.txt") is not None


def test_copy_with_other_name_still_verifies(appliance: Path, tmp_path: Path) -> None:
    assert verify(copy(appliance, tmp_path / "renamed.bin")).ok


def test_large_member_is_checked_piece_by_piece(tmp_path: Path, keys: Path, index, tool_wheels: Path) -> None:  # type: ignore[no-untyped-def]
    from chiron.archive.layout import PIECE

    (tmp_path / "s").mkdir()
    blob = tmp_path / "s" / "blob.bin"
    blob.write_bytes(os.urandom(2 * PIECE + 12345))
    spec = write_spec(tmp_path / "s", keys=keys, index_url=index.url, requirements=["beta==1.0"],
                      environments=ENV_311, extra='[[files]]\nsrc = "blob.bin"\ndest = "blob.bin"\n')  # fmt: skip
    out = do_build(spec, tmp_path / "p.pex", tool_wheels, tmp_path / "cache").output
    report = verify(out)
    assert report.ok, report.problems
    pieces = report.targets_meta["files/blob.bin"]["custom"]["pieces"]
    assert pieces["size"] == PIECE and len(pieces["sha256"]) == 3
    m = read_layout(out).member("files/blob.bin")
    assert m is not None
    data = bytearray(out.read_bytes())
    data[m.offset + m.length - 10] ^= 0xFF  # in the last, short piece
    bad = tmp_path / "bad.pex"
    bad.write_bytes(bytes(data))
    assert verify(bad).problems == ["member files/blob.bin: sha256 does not match the signed targets (modified)"]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("manylinux_2_34_x86_64", "manylinux2014_x86_64-cp-3.12.0-cp312"),  # what pex's pip understands
        ("manylinux_2_12_x86_64", "manylinux2010_x86_64-cp-3.12.0-cp312"),
        ("manylinux2014_aarch64", "manylinux2014_aarch64-cp-3.12.0-cp312"),
    ],
)
def test_tool_platforms_for_pex(tag: str, expected: str) -> None:
    from chiron.core.models import TargetEnvironment
    from chiron.sources.tool import tool_platforms

    env = TargetEnvironment(name="e", python_version="3.12", platforms=[tag])
    assert tool_platforms([env]) == [expected]


def test_a_build_time_that_would_expire_the_metadata_is_refused(
    tmp_path: Path,
    good_spec: Path,
    tool_wheels: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An old SOURCE_DATE_EPOCH: refused at build (exit 2) naming the role, its expiry and the build
    time, before anything is written; never a build that only the verify step after it fails."""
    from chiron.cli import main

    old = int(time.time()) - 10 * 86400  # targets (30d) still fit; timestamp (1d) and snapshot (7d) do not
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(old))
    out, cache = tmp_path / "dist" / "old.pex", tmp_path / "cache"
    argv = ["build", str(good_spec), "-o", str(out), "--tool-wheels", str(tool_wheels), "--cache-dir", str(cache)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    iso = "%Y-%m-%dT%H:%M:%SZ"
    built, expires = time.strftime(iso, time.gmtime(old)), time.strftime(iso, time.gmtime(old + 86400))
    assert exc.value.code == 2, err
    assert f"role timestamp: metadata built at {built} with expires = 1d would expire at {expires}, before now" in err
    assert "(snapshot too)" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not out.parent.exists() and not cache.exists()
