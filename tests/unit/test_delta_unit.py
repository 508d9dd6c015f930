"""Deltas between appliances written in memory: what is carried, rebuilding, and refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sim import Sim

from chiron.archive import delta
from chiron.errors import Refused, UsageError, VerificationError

BIG = os.urandom(2 << 20)


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    sim = Sim()
    old = sim.appliance(tmp_path / "old.pex", {"files/big.bin": BIG, "files/v": b"1"})
    new = sim.appliance(tmp_path / "new.pex", {"files/big.bin": BIG, "files/v": b"2"}, version="1.0.1")
    return old, new


def test_a_delta_carries_only_what_the_base_lacks_and_rebuilds_byte_for_byte(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = pair
    made = delta.make(old, new, tmp_path / "new.delta")
    assert made.reused >= len(BIG) and made.size < len(BIG)
    header = delta.read(made.path)
    carried = {e.name for e in header.extents if e.carried}
    assert "files/v" in carried and "files/big.bin" not in carried
    out = tmp_path / "rebuilt.pex"
    delta.apply(made.path, [old], out)
    assert out.read_bytes() == new.read_bytes()


def test_an_inventory_is_a_base_as_good_as_the_appliance(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = pair
    inv = tmp_path / "inventory.json"
    delta.write_inventory(delta.inventory("demo", [], [old]), inv)
    made = delta.make(inv, new, tmp_path / "from-inventory.delta")
    assert made.carried == delta.make(old, new, tmp_path / "from-appliance.delta").carried


def test_a_host_without_the_base_is_refused_before_anything_is_written(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = pair
    made = delta.make(old, new, tmp_path / "new.delta")
    stranger = Sim().appliance(tmp_path / "other.pex", {"files/v": b"3"})
    out = tmp_path / "out" / "rebuilt.pex"
    with pytest.raises(Refused, match="does not hold"):
        delta.apply(made.path, [stranger], out)
    assert not out.exists()


def test_a_changed_carried_byte_is_caught_and_leaves_nothing(pair: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = pair
    made = delta.make(old, new, tmp_path / "new.delta")
    data = bytearray(made.path.read_bytes())
    data[-1] ^= 1  # the last carried byte (the tool zip's end record)
    made.path.write_bytes(bytes(data))
    out = tmp_path / "out" / "rebuilt.pex"
    with pytest.raises(VerificationError):
        delta.apply(made.path, [old], out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_not_a_delta_and_a_delta_over_its_input(pair: tuple[Path, Path]) -> None:
    old, new = pair
    with pytest.raises(UsageError, match="not a chiron delta"):
        delta.read(old)
    with pytest.raises(UsageError, match="overwrite its own input"):
        delta.make(old, new, new)
