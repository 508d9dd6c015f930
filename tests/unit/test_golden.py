"""The committed fixtures of format v1 (tests/fixtures/v1, never regenerated) still read and verify:
every later chiron must accept the appliances, deltas and inventories that sites hold today."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema

from chiron.archive import delta
from chiron.archive.reader import ArchiveReader, check_tiling
from chiron.archive.toolzip import check_zip
from chiron.engines.diff import diff
from chiron.engines.inspect import inspect_archive
from chiron.engines.verify import verify

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
APPLIANCE = V1 / "appliance-1.0.0.pex"
ROOT = V1 / "1.root.json"
REPO = Path(__file__).resolve().parents[2]


def test_v1_appliance_reads_and_verifies_against_its_root() -> None:
    with ArchiveReader(APPLIANCE) as reader:
        assert check_tiling(reader.layout) == []
        assert check_zip(reader.fd, reader.layout)[1] == []
        assert reader.layout.index["format"] == "chiron-appliance/1"
    fingerprint = hashlib.sha256(ROOT.read_bytes()).hexdigest()
    for report in (verify(APPLIANCE, root_file=ROOT), verify(APPLIANCE, root_sha256=fingerprint)):
        assert report.ok, report.problems
        assert (report.name, report.version) == ("golden", "1.0.0")
        assert report.root_fingerprint == fingerprint
        assert report.targets == 9 and report.bytes_hashed > 0
        assert set(report.roles) == {"root", "timestamp", "snapshot", "targets"}
        assert report.targets_meta["wheels/golden-1.0-py3-none-any.whl"]["custom"] == {"kind": "wheel"}


def test_v1_appliance_inspects() -> None:
    info = inspect_archive(APPLIANCE)
    assert (info["name"], info["version"], info["tool_format"]) == ("golden", "1.0.0", "pex")
    assert [(p["name"], p["version"], p["environments"]) for p in info["packages"]] == [("golden", "1.0", ["cp311"])]
    assert info["root_fingerprint"] == hashlib.sha256(ROOT.read_bytes()).hexdigest()
    assert info["sbom"]["components"] == {"library": 1}


def test_v1_delta_rebuilds_the_next_appliance(tmp_path: Path) -> None:
    d = delta.read(V1 / "appliance-1.1.0.delta")
    assert (d.name, d.version) == ("golden", "1.1.0")
    assert {e.name for e in d.extents if not e.carried} >= {"_archive/shebang", "_archive/tool.zip"}
    out = tmp_path / "golden-1.1.0.pex"
    delta.apply(V1 / "appliance-1.1.0.delta", [APPLIANCE], out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == (V1 / "appliance-1.1.0.sha256").read_text().strip()
    report = verify(out, root_file=ROOT)
    assert report.ok, report.problems
    assert (report.name, report.version) == ("golden", "1.1.0")
    changes = diff(APPLIANCE, out)["packages"]["changed"]
    assert [(c["name"], c["from_version"], c["to_version"]) for c in changes] == [("golden", "1.0", "1.1")]


def test_v1_inventory_is_a_delta_base(tmp_path: Path) -> None:
    inv = V1 / "inventory.json"
    schema = json.loads((REPO / "docs" / "schemas" / "inventory.schema.json").read_text())
    jsonschema.validate(json.loads(inv.read_text()), schema)
    content = delta.base_content(inv)
    assert content == delta.base_content(APPLIANCE)
    rebuilt = tmp_path / "golden-1.1.0.pex"
    delta.apply(V1 / "appliance-1.1.0.delta", [APPLIANCE], rebuilt)
    # A delta made for the host of this inventory carries only what the host lacks.
    made = delta.make(inv, rebuilt, tmp_path / "for-host.delta")
    assert made.reused == sum(e.length for e in delta.read(made.path).extents if not e.carried) > 0
