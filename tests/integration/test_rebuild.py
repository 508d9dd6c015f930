"""Disaster recovery: an appliance rebuilds byte for byte from what it carries; differences are
reported member by member with their cause."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chiron.cli import main
from chiron.engines.rebuild import compare, rebuild
from chiron.errors import ArtifactError

from conftest import do_build
from helpers import ENV_311, files_spec, write_spec


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_offline_rebuild_is_byte_identical(appliance: Path, good_spec: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "rebuilt.pex"
    # No SOURCE_DATE_EPOCH was given for the original: the rebuild takes the time the appliance records.
    code = run(["rebuild", str(appliance), "-o", str(out), "--base", str(good_spec.parent), "--check", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["identical"] is True and report["differences"] == []
    assert out.read_bytes() == appliance.read_bytes()


def test_rebuild_with_files_is_byte_identical(tmp_path: Path, keys: Path, index, tool_wheels: Path) -> None:  # type: ignore[no-untyped-def]
    spec = files_spec(tmp_path / "s", keys=keys, index_url=index.url, text="kept in the appliance\n")
    orig = do_build(spec, tmp_path / "o.pex", tool_wheels, tmp_path / "cache").output
    (tmp_path / "s" / "notes.txt").unlink()  # the original input is gone: the appliance is enough
    result = rebuild(orig, tmp_path / "r.pex", base=spec.parent, tool_wheels=None, cache_dir=tmp_path / "c2")
    assert result.identical, result.differences


def test_perturbed_builds_are_explained(
    good_spec: Path, tool_wheels: Path, session_cache: Path, tmp_path: Path
) -> None:
    epoch = int(time.time()) // 60 * 60
    a = do_build(good_spec, tmp_path / "a.pex", tool_wheels, session_cache, epoch=epoch).output
    b = do_build(good_spec, tmp_path / "b.pex", tool_wheels, session_cache, epoch=epoch + 60).output
    causes = {d["member"]: d["cause"] for d in compare(a, b)}
    assert causes["appliance.json"].startswith("timestamps: created")
    assert "SOURCE_DATE_EPOCH" in causes["appliance.json"]
    assert causes["metadata/targets.json"].startswith("timestamps: expires")
    # Reordered inputs: the requirements listed in another order.
    reordered = good_spec.parent.parent / "reordered"
    reordered.mkdir(exist_ok=True)
    text = good_spec.read_text().replace('["alpha==1.0", "gamma==2.0"]', '["gamma==2.0", "alpha==1.0"]')
    assert text != good_spec.read_text()
    (reordered / "appliance.toml").write_text(text)
    c = do_build(reordered / "appliance.toml", tmp_path / "c.pex", tool_wheels, session_cache, epoch=epoch).output
    causes = {d["member"]: d["cause"] for d in compare(a, c)}
    assert causes["spec/appliance.toml"] == "the spec differs (edited or reordered)"
    assert not [m for m in causes if m.startswith(("wheels/", "lock/"))], causes  # the resolution itself is stable


def test_online_rebuild_detects_a_changed_upstream_artifact(tmp_path: Path, keys: Path, tool_wheels: Path) -> None:
    from helpers import LocalIndex, make_wheel

    wheels = tmp_path / "w"
    make_wheel(wheels, "beta", "1.0")
    index = LocalIndex(wheels)
    try:
        spec = write_spec(
            tmp_path / "s", keys=keys, index_url=index.url, requirements=["beta==1.0"], environments=ENV_311
        )
        orig = do_build(spec, tmp_path / "o.pex", tool_wheels, tmp_path / "cache").output
        ok = rebuild(
            orig, tmp_path / "r1.pex", base=spec.parent, tool_wheels=None, cache_dir=tmp_path / "fresh", online=True
        )
        assert ok.identical and index.file_requests() >= 2  # fetched again from upstream
        index.override["beta-1.0-py3-none-any.whl"] = b"republished with other bytes"
        with pytest.raises(ArtifactError, match=r"beta-1\.0-py3-none-any\.whl: sha256 mismatch"):
            rebuild(
                orig,
                tmp_path / "r2.pex",
                base=spec.parent,
                tool_wheels=None,
                cache_dir=tmp_path / "fresh2",
                online=True,
            )
    finally:
        index.close()


def test_rebuild_refuses_a_tampered_appliance(appliance: Path, good_spec: Path, tmp_path: Path) -> None:
    data = bytearray(appliance.read_bytes())
    data[len(data) // 2] ^= 1
    bad = tmp_path / "bad.pex"
    bad.write_bytes(bytes(data))
    assert run(["rebuild", str(bad), "--base", str(good_spec.parent)]) == 1
