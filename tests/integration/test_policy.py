"""Policy rules against a lock of real wheels: allow/deny, licences, sdists, yanked, OSV ranges; and a
yanked release on the loopback index caught at refresh time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chiron.engines import policy
from chiron.errors import PolicyViolation, SpecError
from chiron.sources import lock as _lock

from helpers import make_wheel


def _lock_of(tmp: Path, pkgs: list[tuple[str, str, str]]) -> tuple[_lock.Lock, dict[str, Path]]:
    """A lock over wheels made here: (name, version, licence) each."""
    files: dict[str, Path] = {}
    packages = []
    for name, version, licence in pkgs:
        wheel = make_wheel(tmp / "wheels", name, version, license=licence)
        art = _lock.Artifact(filename=wheel.name, url=f"http://127.0.0.1/{wheel.name}", sha256="0" * 64)
        packages.append(_lock.LockedPackage(name, version, None, {wheel.name: art}, {"cp311"}))
        files[wheel.name] = wheel
    selection = {"cp311": {p.name: next(iter(p.artifacts.values())) for p in packages}}
    return _lock.Lock(packages=packages, selection=selection), files


def _policy(tmp: Path, text: str) -> policy.LoadedPolicy:
    path = tmp / "policy.toml"
    path.write_text(text)
    return policy.load(path)


def _rules(violations: list[policy.Violation]) -> list[tuple[str, str, str]]:
    return [(v.package, v.version, v.rule) for v in violations]


def test_allow_deny_and_licences(tmp_path: Path) -> None:
    lock, files = _lock_of(tmp_path, [("alpha", "1.0", "MIT"), ("beta", "2.0", "GPL-3.0-only"), ("gamma", "1.0", "")])
    rules = _policy(
        tmp_path,
        '[packages]\nallow = ["alpha", "b*"]\ndeny = ["beta>=2"]\n[licenses]\nallow = ["MIT", "Apache-2.0"]\n',
    )
    found = policy.check(rules, lock, files)
    assert _rules(found) == [
        ("beta", "2.0", "packages.deny"),
        ("beta", "2.0", "licenses.allow"),
        ("gamma", "1.0", "packages.allow"),
        ("gamma", "1.0", "licenses.allow"),
    ]
    assert str(found[1]) == "beta 2.0: licenses.allow: licence 'GPL-3.0-only' is not allowed"
    assert found[3].detail == "declares no licence"
    lenient = _policy(tmp_path, '[licenses]\nallow = ["MIT", "GPL-3.0-only"]\nallow_unknown = true\n')
    assert policy.check(lenient, lock, files) == []


def test_yanked_and_sdists(tmp_path: Path) -> None:
    lock, files = _lock_of(tmp_path, [("alpha", "1.0", "MIT")])
    lock.packages[0].yanked = True
    sdist = _lock.Artifact(filename="alpha-1.0.tar.gz", url="http://127.0.0.1/alpha-1.0.tar.gz", sha256="1" * 64)
    lock.packages[0].artifacts[sdist.filename] = sdist
    assert _rules(policy.check(policy.load(None), lock, files)) == [
        ("alpha", "1.0", "sources.yanked"),
        ("alpha", "1.0", "sources.sdists"),
    ]
    allowed = _policy(tmp_path, "[sources]\nyanked = true\nsdists = true\n")
    assert policy.check(allowed, lock, files) == []


@pytest.mark.parametrize(
    ("events", "versions", "affected"),
    [
        ([{"introduced": "0"}, {"fixed": "1.2"}], [], {"1.0": True, "1.2": False, "2.0": False}),
        ([{"introduced": "1.1"}, {"last_affected": "1.3"}], [], {"1.0": False, "1.3": True, "1.4": False}),
        ([{"introduced": "0"}], [], {"1.0": True, "9.0": True}),
        ([{"introduced": "1.0"}, {"fixed": "1.1"}, {"introduced": "2.0"}], [], {"1.1": False, "2.5": True}),
        ([], ["1.0"], {"1.0": True, "1.1": False}),
        ([], ["1.0.0"], {"1.0": True}),  # compared as PEP 440 versions, not strings
        ([{"introduced": "not-a-version"}, {"fixed": "2.0"}], [], {"1.0": True, "2.0": False}),  # fails closed
    ],
)
def test_osv_ranges(
    tmp_path: Path, events: list[dict[str, str]], versions: list[str], affected: dict[str, bool]
) -> None:
    db = tmp_path / "osv" / "nested"
    db.mkdir(parents=True)
    record = {
        "id": "GHSA-xxxx",
        "aliases": ["CVE-2026-0001"],
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "Alpha"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}] if events else [],
                "versions": versions,
            }
        ],
    }
    (db / "GHSA-xxxx.json").write_text(json.dumps(record))
    for version, expected in affected.items():
        lock, files = _lock_of(tmp_path / version, [("alpha", version, "MIT")])
        rules = _policy(tmp_path, '[vulnerabilities]\nosv_db = "osv"\n')
        assert bool(policy.check(rules, lock, files)) is expected, version
        ignoring = _policy(tmp_path, '[vulnerabilities]\nosv_db = "osv"\nignore = ["CVE-2026-0001"]\n')
        assert policy.check(ignoring, lock, files) == []


def test_withdrawn_advisories_are_ignored(tmp_path: Path) -> None:
    db = tmp_path / "osv"
    db.mkdir()
    affected = [{"package": {"ecosystem": "PyPI", "name": "alpha"}, "versions": ["1.0"]}]
    (db / "a.json").write_text(json.dumps({"id": "A", "withdrawn": "2026-01-01T00:00:00Z", "affected": affected}))
    lock, files = _lock_of(tmp_path, [("alpha", "1.0", "MIT")])
    assert policy.check(_policy(tmp_path, '[vulnerabilities]\nosv_db = "osv"\n'), lock, files) == []


def test_bad_policy_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"policy.toml: packages.deny: 'not valid!' is not a requirement"):
        _policy(tmp_path, '[packages]\ndeny = ["not valid!"]\n')
    with pytest.raises(SpecError, match=r"licences: unknown field"):
        _policy(tmp_path, "[licences]\nallow = []\n")
    with pytest.raises(SpecError, match="the OSV database directory does not exist"):
        _policy(tmp_path, '[vulnerabilities]\nosv_db = "missing"\n')
    (tmp_path / "osv").mkdir()
    (tmp_path / "osv" / "bad.json").write_text("{")
    with pytest.raises(SpecError, match=r"bad.json: not an OSV JSON record"):
        _policy(tmp_path, '[vulnerabilities]\nosv_db = "osv"\n')
    with pytest.raises(SpecError, match="policy file not found"):
        policy.load(tmp_path / "nope.toml")


def test_yanked_release_on_the_index_is_caught(tmp_path: Path, keys: Path, tool_wheels: Path) -> None:
    """pip's report says a release pinned with == is yanked; the refresh refuses it by default."""
    from chiron.engines import mirror

    from helpers import LocalIndex, write_spec

    wheels = tmp_path / "up"
    pinned = make_wheel(wheels, "beta", "1.0")
    idx = LocalIndex(wheels)
    idx.yanked.add(pinned.name)
    try:
        spec = write_spec(tmp_path / "spec", keys=keys, index_url=idx.url, requirements=["beta==1.0"])
        with pytest.raises(PolicyViolation, match=r"beta 1.0: sources.yanked") as exc:
            mirror.refresh(mirror.RefreshOptions(store=tmp_path / "store", spec=spec, tool_wheels=tool_wheels))
        assert exc.value.details == [
            {
                "package": "beta",
                "version": "1.0",
                "rule": "sources.yanked",
                "detail": "this release is yanked on the index",
            }
        ]
        assert not (tmp_path / "store" / "state.json").exists()
    finally:
        idx.close()
