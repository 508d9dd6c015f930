"""verify's decisions on appliances signed in memory: anchors, tampering, expiry, rollback, rotation."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sim import Sim

from chiron.archive.reader import read_layout
from chiron.engines.verify import TRUSTED_FILES, HostTrust, verified, verify


def _root_file(sim: Sim, tmp_path: Path) -> Path:
    path = tmp_path / "1.root.json"
    path.write_bytes(sim.root)
    return path


def _trust_host(report_trusted: dict[str, bytes], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in TRUSTED_FILES:
        (directory / name).write_bytes(report_trusted[name])
    return directory


def test_verifies_against_a_root_file_and_a_fingerprint(tmp_path: Path) -> None:
    sim = Sim()
    archive = sim.appliance(tmp_path / "a.pex", {"files/x": b"x"})
    by_file = verify(archive, root_file=_root_file(sim, tmp_path))
    assert by_file.ok, by_file.problems
    by_hash = verify(archive, root_sha256=hashlib.sha256(sim.root).hexdigest())
    assert by_hash.ok and by_hash.root_fingerprint == hashlib.sha256(sim.root).hexdigest()
    wrong = verify(archive, root_sha256="ab" * 32)
    assert not wrong.ok and "no root metadata in the archive has sha256" in wrong.problems[0]


def test_a_root_from_other_keys_is_refused(tmp_path: Path) -> None:
    archive = Sim().appliance(tmp_path / "a.pex", {"files/x": b"x"})
    report = verify(archive, root_file=_root_file(Sim(), tmp_path))
    assert not report.ok and report.problems


def test_a_changed_byte_is_found_and_named(tmp_path: Path) -> None:
    sim = Sim()
    archive = sim.appliance(tmp_path / "a.pex", {"files/x": b"original content"})
    m = read_layout(archive).member("files/x")
    assert m is not None
    data = bytearray(archive.read_bytes())
    data[m.offset] ^= 1
    archive.write_bytes(bytes(data))
    report = verify(archive, root_file=_root_file(sim, tmp_path))
    assert not report.ok
    assert report.problems == ["member files/x: sha256 does not match the signed targets (modified)"]


def test_expired_metadata_is_refused(tmp_path: Path) -> None:
    sim = Sim()
    sim.now -= timedelta(days=60)
    archive = sim.appliance(tmp_path / "a.pex", {"files/x": b"x"})
    report = verify(archive, root_file=_root_file(sim, tmp_path))
    assert not report.ok and "expired" in report.problems[0]


def test_an_older_appliance_is_a_rollback_for_a_host_that_trusts_a_newer_one(tmp_path: Path) -> None:
    sim = Sim()
    old = sim.appliance(tmp_path / "old.pex", {"files/x": b"1"})
    new = sim.appliance(tmp_path / "new.pex", {"files/x": b"2"})
    first = verify(new, root_file=_root_file(sim, tmp_path))
    assert first.ok
    host = _trust_host(first.trusted, tmp_path / "host")
    report = verify(old, host=HostTrust(host))
    assert not report.ok and report.rollback and "rollback refused" in report.problems[0]
    allowed = verify(old, host=HostTrust(host, allow_rollback=True))
    assert allowed.ok, allowed.problems


def test_a_rotated_online_key_verifies_from_the_first_root(tmp_path: Path) -> None:
    sim = Sim()
    sim.appliance(tmp_path / "v1.pex", {"files/x": b"1"})
    sim.rotate("targets")
    archive = sim.appliance(tmp_path / "v2.pex", {"files/x": b"2"})
    report = verify(archive, root_file=_root_file(sim, tmp_path))
    assert report.ok, report.problems
    assert report.roles["root"]["version"] == 2


def test_fast_forward_recovery_after_rotating_timestamp_and_snapshot_keys(tmp_path: Path) -> None:
    """TUF's recovery from a fast-forward attack: after the timestamp and snapshot keys are rotated,
    versions may start lower, and a host that trusted the high versions must accept them."""
    sim = Sim()
    high = sim.appliance(tmp_path / "high.pex", {"files/x": b"1"}, metadata_version=1_000_000)
    trusted = verify(high, root_file=_root_file(sim, tmp_path))
    assert trusted.ok
    host = _trust_host(trusted.trusted, tmp_path / "host")
    sim.rotate("timestamp")
    sim.rotate("snapshot")
    low = sim.appliance(tmp_path / "low.pex", {"files/x": b"2"}, metadata_version=1)
    report = verify(low, host=HostTrust(host))
    assert report.ok, report.problems
    assert report.roles["timestamp"]["version"] == 1


def test_the_verified_handle_rereads_with_checks_and_closes(tmp_path: Path) -> None:
    sim = Sim()
    archive = sim.appliance(tmp_path / "a.pex", {"files/x": b"payload"})
    with verified(archive, root_file=_root_file(sim, tmp_path)) as report:
        handle = report.verified
        assert handle.read("files/x") == b"payload"
        copy = tmp_path / "copy.pex"
        shutil.copyfile(archive, copy)
    assert report.appliance is None and handle.reader.fd == -1


def test_no_handle_when_verification_fails(tmp_path: Path) -> None:
    archive = Sim().appliance(tmp_path / "a.pex", {"files/x": b"x"})
    with verified(archive, root_file=_root_file(Sim(), tmp_path)) as report:
        assert not report.ok and report.appliance is None
        with pytest.raises(Exception, match=r"."):
            report.verified  # noqa: B018 - the property raises when there is no verified appliance
