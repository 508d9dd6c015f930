"""chiron diff: the changelog between two appliances, from their locks and wheels' own metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chiron.cli import main
from chiron.engines.diff import diff

from conftest import do_build
from helpers import ENV_311, write_spec


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, keys: Path, index, tool_wheels: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("diff")
    old = write_spec(tmp / "old", keys=keys, index_url=index.url, requirements=["beta==1.0"], environments=ENV_311)
    new = write_spec(
        tmp / "new",
        keys=keys,
        index_url=index.url,
        requirements=["alpha==1.0", "beta==1.1"],
        environments=ENV_311,
        version="1.1.0",
    )
    return (
        do_build(old, tmp / "old.pex", tool_wheels, tmp / "cache").output,
        do_build(new, tmp / "new.pex", tool_wheels, tmp / "cache").output,
    )


def test_diff_reports_added_upgraded_and_licence_changes(pair: tuple[Path, Path]) -> None:
    d = diff(*pair)
    assert [p["name"] for p in d["packages"]["added"]] == ["alpha"]
    assert d["packages"]["added"][0]["licence"] == "MIT"
    assert d["packages"]["removed"] == []
    (beta,) = d["packages"]["changed"]
    assert (beta["from_version"], beta["to_version"]) == ("1.0", "1.1")
    assert (beta["from_licence"], beta["to_licence"]) == ("MIT", "Apache-2.0")
    back = diff(pair[1], pair[0])
    assert [p["name"] for p in back["packages"]["removed"]] == ["alpha"]
    assert diff(pair[0], pair[0])["packages"] == {"added": [], "removed": [], "changed": []}


def test_diff_cli(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(pair[0]), str(pair[1])])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "+ alpha 1.0" in out and "~ beta 1.0 -> 1.1" in out and "licence MIT -> Apache-2.0" in out
    with pytest.raises(SystemExit):
        main(["diff", str(pair[0]), str(pair[1]), "--json"])
    assert json.loads(capsys.readouterr().out)["schema"] == "chiron.diff/1"
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(pair[0]), str(tmp_path / "missing.pex")])
    assert exc.value.code == 2
