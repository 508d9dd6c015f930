"""Resolution per environment with real pip against a loopback index; the lock; hash re-checks."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from chiron.core.spec import load_spec
from chiron.errors import ArtifactError, LockError
from chiron.sources import lock as _lock
from chiron.sources.cache import ArtifactCache

from conftest import do_build
from helpers import ENV_311, ENV_312, LocalIndex, make_sdist, make_wheel, write_spec


@pytest.fixture()
def private_index(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = tmp_path / "wheels"
    make_wheel(d, "alpha", "1.0", deps=("beta",))
    make_wheel(d, "beta", "1.0")
    make_wheel(d, "onlycp311", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    make_sdist(d, "sdistonly", "0.1")
    idx = LocalIndex(d)
    yield idx
    idx.close()


def test_resolve_and_round_trip(tmp_path: Path, keys: Path, private_index: LocalIndex) -> None:
    spec = load_spec(
        write_spec(
            tmp_path / "s",
            keys=keys,
            index_url=private_index.url,
            requirements=["alpha", "onlycp311; python_version == '3.11'"],
            environments=ENV_311 + ENV_312,
        )
    )
    lock = _lock.resolve(spec.spec, spec.base)
    assert sorted(lock.selection["cp311"]) == ["alpha", "beta", "onlycp311"]
    assert sorted(lock.selection["cp312"]) == ["alpha", "beta"]
    measured = {}
    cache = ArtifactCache(tmp_path / "cache")
    for art in lock.artifacts():
        _p, sha, size = cache.fetch(art.url, art.sha256, art.filename)
        assert sha == hashlib.sha256((private_index.directory / art.filename).read_bytes()).hexdigest()
        measured[art.filename] = (sha, size)
    _lock.fill_hashes(lock, measured)
    text = _lock.write_pylock(lock, spec.spec)
    data = tomllib.loads(text.decode())
    only = next(p for p in data["packages"] if p["name"] == "onlycp311")
    assert only["marker"] == 'python_version == "3.11"'
    path = tmp_path / "pylock.toml"
    path.write_bytes(text)
    again = _lock.read_pylock(path, spec.spec)
    assert {e: sorted(a.filename for a in s.values()) for e, s in again.selection.items()} == {
        e: sorted(a.filename for a in s.values()) for e, s in lock.selection.items()
    }
    assert _lock.write_pylock(again, spec.spec) == text
    req = _lock.requirements_txt(again, "cp311").decode()
    assert "onlycp311==1.0 \\\n    --hash=sha256:" in req


def test_sdist_only_is_refused_with_the_fix(tmp_path: Path, keys: Path, private_index: LocalIndex) -> None:
    spec = load_spec(write_spec(tmp_path / "s", keys=keys, index_url=private_index.url, requirements=["sdistonly"]))
    with pytest.raises(LockError) as exc:
        _lock.resolve(spec.spec, spec.base)
    assert "environment cp311" in exc.value.message and "sdistonly" in exc.value.message
    assert exc.value.hint and "allow_sdists" in exc.value.hint


def test_sdist_allowed_when_the_spec_says_so(tmp_path: Path, keys: Path, private_index: LocalIndex) -> None:
    spec = load_spec(
        write_spec(
            tmp_path / "s",
            keys=keys,
            index_url=private_index.url,
            requirements=["sdistonly"],
            extra_python="allow_sdists = true",
        )
    )
    lock = _lock.resolve(spec.spec, spec.base)
    assert [a.filename for a in lock.artifacts()] == ["sdistonly-0.1.tar.gz"]


def test_download_with_wrong_bytes_is_rejected(
    tmp_path: Path, keys: Path, private_index: LocalIndex, tool_wheels: Path
) -> None:
    spec_path = write_spec(tmp_path / "s", keys=keys, index_url=private_index.url, requirements=["beta"])
    spec = load_spec(spec_path)
    lock = _lock.resolve(spec.spec, spec.base)
    art = lock.artifacts()[0]
    private_index.override[art.filename] = b"not the wheel that was locked"
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ArtifactError) as exc:
        cache.fetch(art.url, art.sha256, art.filename)
    assert "sha256 mismatch" in exc.value.message and art.filename in exc.value.message
    assert exc.value.exit_code == 3
    assert not list((tmp_path / "cache").rglob(".partial-*")), "a failed download must leave no partial file"
    # The build re-resolves (from PEP 658 metadata, no download), then refuses the bytes; nothing is written.
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        do_build(spec_path, tmp_path / "out.pex", tool_wheels, tmp_path / "cache2")
    assert not (tmp_path / "out.pex").exists()
    assert not list(tmp_path.glob(".out.pex.*"))


def test_tampered_cache_is_caught_when_packing(
    tmp_path: Path, keys: Path, private_index: LocalIndex, tool_wheels: Path
) -> None:
    spec_path = write_spec(tmp_path / "s", keys=keys, index_url=private_index.url, requirements=["beta"])
    cache_dir = tmp_path / "cache"
    do_build(spec_path, tmp_path / "ok.pex", tool_wheels, cache_dir)
    (cached,) = [p for p in (cache_dir / "sha256").rglob("*") if p.is_file()]
    cached.write_bytes(b"evil")
    # Resolution pins the index's hash; the cache entry under that hash now holds other bytes.
    with pytest.raises(ArtifactError, match=r"the lock pins"):
        do_build(spec_path, tmp_path / "bad.pex", tool_wheels, cache_dir)
    assert not (tmp_path / "bad.pex").exists()


def test_lock_missing_artifact_for_environment(tmp_path: Path, keys: Path, private_index: LocalIndex) -> None:
    spec = load_spec(
        write_spec(
            tmp_path / "s",
            keys=keys,
            index_url=private_index.url,
            requirements=["onlycp311"],
            environments=ENV_311,
        )
    )
    lock = _lock.resolve(spec.spec, spec.base)
    cache = ArtifactCache(tmp_path / "cache")
    _lock.fill_hashes(lock, {a.filename: cache.fetch(a.url, a.sha256, a.filename)[1:] for a in lock.artifacts()})
    path = tmp_path / "pylock.toml"
    path.write_bytes(_lock.write_pylock(lock, spec.spec))
    spec312 = load_spec(
        write_spec(tmp_path / "t", keys=keys, index_url=private_index.url, requirements=["x"], environments=ENV_312)
    )
    with pytest.raises(LockError, match=r"onlycp311 1\.0 has no artifact for environment cp312"):
        _lock.read_pylock(path, spec312.spec)


def test_bad_lock_files(tmp_path: Path, keys: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "s", keys=keys, index_url="http://127.0.0.1:9/simple", requirements=["x"]))
    path = tmp_path / "pylock.toml"
    with pytest.raises(LockError, match="lock file not found"):
        _lock.read_pylock(path, spec.spec)
    path.write_text('lock-version = "2.0"\n')
    with pytest.raises(LockError, match=r"is not a PEP 751 1\.x lock"):
        _lock.read_pylock(path, spec.spec)
    path.write_text(
        'lock-version = "1.0"\n[[packages]]\nname = "x"\nversion = "1"\n'
        'wheels = [{ name = "x-1-py3-none-any.whl", url = "http://h/x", hashes = { md5 = "0" } }]\n'
    )
    with pytest.raises(LockError, match=r"packages\[0\]\.wheels\[0\] \(x-1-py3-none-any.whl\): needs hashes.sha256"):
        _lock.read_pylock(path, spec.spec)


def test_manylinux_expansion_admits_older_baselines() -> None:
    assert "manylinux2014_x86_64" in _lock.expand_platform("manylinux_2_28_x86_64")
    assert "manylinux_2_17_x86_64" in _lock.expand_platform("manylinux_2_28_x86_64")
    assert "manylinux_2_34_x86_64" not in _lock.expand_platform("manylinux_2_28_x86_64")
    assert _lock.expand_platform("linux_x86_64") == ["linux_x86_64"]
    assert ENV_311  # the helpers' environment uses the expansion too


def test_stale_lock_is_refused(tmp_path: Path, keys: Path, private_index: LocalIndex, tool_wheels: Path) -> None:
    from chiron.cli import main

    spec_path = write_spec(tmp_path / "s", keys=keys, index_url=private_index.url, requirements=["beta==1.0"])
    with pytest.raises(SystemExit) as exc:
        main(["lock", str(spec_path), "-o", str(tmp_path / "s" / "pylock.toml")])
    assert exc.value.code == 0
    text = spec_path.read_text().replace("[python]", '[python]\nlock = "pylock.toml"')
    spec_path.write_text(text.replace('"beta==1.0"', '"beta>=2"'))
    with pytest.raises(LockError, match=r"does not satisfy python.requirements 'beta>=2' for environment cp311"):
        do_build(spec_path, tmp_path / "o.pex", tool_wheels, tmp_path / "cache")


def test_partial_download_is_continued_or_restarted(tmp_path: Path, private_index: LocalIndex) -> None:
    wheel = private_index.directory / "beta-1.0-py3-none-any.whl"
    data = wheel.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    url = f"{private_index.url.removesuffix('/simple')}/files/{wheel.name}"
    cache = ArtifactCache(tmp_path / "cache")
    partial = tmp_path / "cache" / f".partial-{sha}"
    partial.parent.mkdir()
    # A good prefix and an index that honours Range: only the rest is fetched.
    partial.write_bytes(data[:100])
    private_index.ranges = []
    path, got, size = cache.fetch(url, sha, wheel.name)
    assert (got, size, path.read_bytes()) == (sha, len(data), data) and not partial.exists()
    assert private_index.ranges == [(wheel.name, 100)] and cache.stats.bytes_downloaded == len(data) - 100
    assert cache.stats.resumed == 1
    # A corrupt prefix: the joined file fails its hash, so the whole file is fetched once more.
    path.unlink()
    partial.write_bytes(b"X" * 100)
    private_index.ranges.clear()
    assert cache.fetch(url, sha, wheel.name)[0].read_bytes() == data and not partial.exists()
    assert private_index.ranges == [(wheel.name, 100)]  # then a plain request, with no Range
    # An index without Range support answers 200: the partial is discarded and the whole file fetched.
    cache.path_for(sha).unlink()
    partial.write_bytes(data[:100])
    private_index.ranges = None
    assert cache.fetch(url, sha, wheel.name)[0].read_bytes() == data


def test_a_project_the_index_does_not_have_is_named(tmp_path: Path, keys: Path, private_index: LocalIndex) -> None:
    """The index answered 404 for the project: a spec problem (exit 2), named as one."""
    spec = load_spec(write_spec(tmp_path / "s", keys=keys, index_url=private_index.url, requirements=["nosuchproject"]))
    with pytest.raises(LockError) as exc:
        _lock.resolve(spec.spec, spec.base)
    assert f"the index {private_index.url} has no project 'nosuchproject'" in exc.value.message
    assert exc.value.hint and "allow_sdists" not in exc.value.hint


def test_an_index_that_is_down_is_a_network_failure(tmp_path: Path, keys: Path) -> None:
    """pip says "no matching distribution" for an unreachable index too: the index is asked before the
    spec is blamed (exit 3, naming the URL)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/simple"
    spec = load_spec(write_spec(tmp_path / "s", keys=keys, index_url=url, requirements=["alpha"]))
    with pytest.raises(ArtifactError) as exc:
        _lock.resolve(spec.spec, spec.base)
    assert exc.value.exit_code == 3
    assert exc.value.message.startswith(f"environment cp311: cannot reach the package index at {url}/alpha/")
