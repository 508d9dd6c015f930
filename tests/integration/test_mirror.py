"""The mirror store: refresh against a loopback index whose content changes between runs, policy,
a SIGKILLed refresh, the store lock, deltas applied on real hosts, and restore from an appliance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chiron.archive import delta
from chiron.core import filelock as _lockfile
from chiron.engines import host, mirror
from chiron.engines.verify import verify
from chiron.errors import Refused
from chiron.trust import metadata as _trust

from helpers import LocalIndex, make_wheel, write_spec

EPOCH = int(time.time()) - 3600  # recent: the metadata must still be valid when hosts verify it


@pytest.fixture()
def spec(tmp_path: Path, keys: Path, upstream: LocalIndex) -> Path:
    return write_spec(tmp_path / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])


def _refresh(store: Path, spec: Path | None, tool_wheels: Path, epoch: int, **kw) -> mirror.RefreshResult:  # type: ignore[no-untyped-def]
    return mirror.refresh(
        mirror.RefreshOptions(
            store=store, spec=spec, tool_wheels=tool_wheels, source_date_epoch=epoch, show_progress=False, **kw
        )
    )


def _two_versions(
    store: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path
) -> tuple[Path, mirror.RefreshResult, mirror.RefreshResult]:
    """A store at its second version (beta 1.0 -> 1.1), with a delta from the first."""
    first = _refresh(store, spec, tool_wheels, EPOCH)
    make_wheel(upstream.directory, "beta", "1.1")
    return store, first, _refresh(store, None, tool_wheels, EPOCH + 60, delta_from=first.appliance)


def _opts(archive: Path, prefix: Path, **kw) -> host.InstallOptions:  # type: ignore[no-untyped-def]
    return host.InstallOptions(archive=archive, prefix=prefix, **kw)


def _installed(prefix: Path, module: str) -> str:
    py = prefix / "current" / "venv" / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", f"import {module}; print({module}.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip()


def test_refresh_cycle_no_op_new_release_and_delta(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    store = seeded(tmp_path / "store")
    wheels = upstream.directory
    first = _refresh(store, spec, tool_wheels, EPOCH)
    assert first.changed and first.downloaded == 2 and first.metadata_version == EPOCH
    assert verify(first.appliance, root_file=keys / "1.root.json").ok  # type: ignore[arg-type]

    # What a killed run built but never recorded is removed before anything else.
    orphans = [store / "appliances" / f"demo-1.0.0-{EPOCH + 1}.pex", store / "locks" / f"{EPOCH + 1}.pylock.toml"]
    for orphan in orphans:
        orphan.write_bytes(b"never recorded")
    # Nothing new upstream: no artifact is requested, no version is signed, and it says so.
    upstream.requests.clear()
    same = _refresh(store, None, tool_wheels, EPOCH + 60)  # the store remembers its spec
    assert not any(o.exists() for o in orphans)
    assert not same.changed and same.downloaded == 0 and upstream.file_requests() == 0
    # Every locked project's page is unchanged, so pip was not even run (no PEP 658 metadata read).
    assert not [p for p in upstream.requests if p.endswith(".metadata")]
    assert "stays the newest" in same.notes[0]
    assert mirror.status(store)["versions"] == [EPOCH]

    # A new release (with a new dependency) is picked up and signed as version N+1.
    make_wheel(wheels, "alpha", "1.1", deps=("beta>=1", "zeta"))
    make_wheel(wheels, "zeta", "1.0")
    upstream.requests.clear()
    second = _refresh(store, None, tool_wheels, EPOCH + 120)
    assert second.changed and second.metadata_version == EPOCH + 1
    assert second.downloaded == 2 and upstream.file_requests() == 2  # only alpha 1.1 and zeta
    report = verify(second.appliance, root_file=keys / "1.root.json")  # type: ignore[arg-type]
    assert report.ok and report.roles["targets"]["version"] == EPOCH + 1
    changes = second.changelog["packages"]  # type: ignore[index]
    assert [p["name"] for p in changes["added"]] == ["zeta"]
    assert [(p["name"], p["from_version"], p["to_version"]) for p in changes["changed"]] == [("alpha", "1.0", "1.1")]
    assert (store / "locks" / f"{EPOCH + 1}.pylock.toml").is_file()
    assert json.loads((store / "tuf" / "timestamp.json").read_text())["signed"]["version"] == EPOCH + 1

    # Then beta 1.1, with a delta against the previous appliance.
    make_wheel(wheels, "beta", "1.1")
    third = _refresh(store, None, tool_wheels, EPOCH + 180, delta_from=second.appliance)
    assert third.delta is not None and third.delta_size is not None and third.size is not None
    d = delta.read(third.delta)
    carried = {e.name for e in d.extents if e.carried}
    assert "wheels/beta-1.1-py3-none-any.whl" in carried
    assert not {"_archive/tool.zip", "wheels/alpha-1.1-py3-none-any.whl", "wheels/zeta-1.0-py3-none-any.whl"} & carried
    assert "metadata/1.root.json" not in carried  # unchanged metadata files come from the base too
    # No larger than the changed content plus metadata (the header is the only overhead).
    assert third.delta_size == d.data_offset + sum(e.length for e in d.extents if e.carried)
    assert d.data_offset < 16 << 10 and third.delta_size < third.size / 10
    # Nothing new since: no version is signed, but --delta-from still gives the delta to the newest.
    third.delta.unlink()
    again = _refresh(store, None, tool_wheels, EPOCH + 240, delta_from=second.appliance)
    assert not again.changed and again.delta == third.delta and third.delta.is_file()

    # Host A runs the previous release: the delta completes it, and the rebuilt file IS the appliance.
    host_a = tmp_path / "host-a"
    host.install(_opts(second.appliance, host_a, root_file=keys / "1.root.json"))  # type: ignore[arg-type]
    result = host.upgrade(_opts(third.delta, host_a))
    assert result.changed and _installed(host_a, "beta") == "1.1"
    assert (host_a / "current" / "appliance").read_bytes() == third.appliance.read_bytes()  # type: ignore[union-attr]
    assert not list((host_a / "state" / "staging").rglob("*.pex"))
    last = json.loads((host_a / "state" / "audit.jsonl").read_text().splitlines()[-1])
    assert last["result"] == "ok" and last["archive"] == str(third.delta)  # what the operator gave

    # Host B still runs the first release: it lacks alpha 1.1 and zeta, so the delta is refused.
    host_b = tmp_path / "host-b"
    host.install(_opts(first.appliance, host_b, root_file=keys / "1.root.json"))  # type: ignore[arg-type]
    before = host.status(host_b, None)["current"]
    with pytest.raises(Refused, match=r"does not hold 2 piece\(s\).*alpha-1.1"):
        host.upgrade(_opts(third.delta, host_b))
    assert host.status(host_b, None)["current"] == before and _installed(host_b, "alpha") == "1.0"

    # A delta made from host B's own inventory fits it.
    inv = tmp_path / "b-inventory.json"
    delta.write_inventory(host.inventory(host_b, None), inv)
    made = delta.make(inv, third.appliance, tmp_path / "for-b.delta")  # type: ignore[arg-type]
    assert made.size < third.size
    host.upgrade(_opts(made.path, host_b))
    assert _installed(host_b, "alpha") == "1.1" and _installed(host_b, "beta") == "1.1"


def test_damaged_delta_is_refused_before_anything_changes(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    _store, first, second = _two_versions(seeded(tmp_path / "store"), spec, upstream, tool_wheels)
    assert second.delta is not None
    prefix = tmp_path / "host"
    host.install(_opts(first.appliance, prefix, root_file=keys / "1.root.json"))  # type: ignore[arg-type]
    data = bytearray(second.delta.read_bytes())
    data[-100] ^= 1  # a flipped bit in the carried bytes (the tail of the tool-members or a wheel)
    bad = tmp_path / "bad.delta"
    bad.write_bytes(bytes(data))
    from chiron.errors import UsageError, VerificationError

    with pytest.raises(UsageError, match="is a chiron delta, not a whole appliance"):
        verify(second.delta)
    with pytest.raises(VerificationError, match="do not match"):
        host.upgrade(_opts(bad, prefix))
    truncated = tmp_path / "short.delta"
    truncated.write_bytes(bytes(data[:-10]))
    with pytest.raises(VerificationError, match="truncated"):
        host.upgrade(_opts(truncated, prefix))
    # A header is not trusted: repeating a big kept piece, or not being an object, is refused up front.
    d = delta.read(second.delta)
    hdr = dict(d.header)
    big = max((e for e in hdr["extents"] if not e["carried"]), key=lambda e: e["length"])
    twice = dict(hdr, extents=[*hdr["extents"], *hdr["extents"]])
    twice["size"] = sum(e["length"] for e in twice["extents"])
    many = dict(hdr, extents=[*hdr["extents"], *({**big, "name": f"copy-{i}"} for i in range(1000))])
    many["size"] = sum(e["length"] for e in many["extents"])
    cases = (
        (twice, "listed twice"),
        (many, "more than the delta and the host's appliances hold"),
        (["not", "an", "object"], "malformed delta header"),
    )
    for header, problem in cases:
        raw = json.dumps(header).encode()
        carried = second.delta.read_bytes()[d.data_offset :]
        forged = tmp_path / "forged.delta"
        forged.write_bytes(delta.HEAD.pack(delta.MAGIC, len(raw)) + raw + carried)
        with pytest.raises(VerificationError, match=problem):
            host.upgrade(_opts(forged, prefix))
    assert _installed(prefix, "beta") == "1.0"
    assert not list((prefix / "state" / "staging").rglob("*.tmp"))


def test_policy_violation_blocks_the_refresh(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    store = seeded(tmp_path / "store")
    first = _refresh(store, spec, tool_wheels, EPOCH)
    osv = tmp_path / "spec" / "osv"
    osv.mkdir()
    (osv / "PYSEC-0000-1.json").write_text(
        json.dumps(
            {
                "id": "PYSEC-0000-1",
                "summary": "beta leaks secrets",
                "affected": [
                    {
                        "package": {"ecosystem": "PyPI", "name": "Beta"},
                        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.1"}, {"fixed": "1.3"}]}],
                    }
                ],
            }
        )
    )
    (tmp_path / "spec" / "policy.toml").write_text('[vulnerabilities]\nosv_db = "osv"\n')
    make_wheel(upstream.directory, "beta", "1.2")
    proc = subprocess.run(
        [sys.executable, "-m", "chiron", "mirror", "refresh", "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "CHIRON_TOOL_WHEELS": str(tool_wheels), "SOURCE_DATE_EPOCH": str(EPOCH + 60)},
    )
    assert proc.returncode == 4, proc.stderr
    out = json.loads(proc.stdout)
    assert "beta 1.2: vulnerabilities: PYSEC-0000-1: beta leaks secrets" in out["error"]
    assert out["details"] == [
        {"package": "beta", "version": "1.2", "rule": "vulnerabilities", "detail": "PYSEC-0000-1: beta leaks secrets"}
    ]
    state = mirror.status(store)
    assert state["versions"] == [EPOCH] and state["latest"]["file"] == str(first.appliance.relative_to(store))  # type: ignore[union-attr]
    assert sorted(p.name for p in (store / "appliances").iterdir()) == sorted(
        [first.appliance.name, first.appliance.name + ".sig"]  # type: ignore[union-attr]
    )
    # Accepting the advisory (with the decision in a policy file given explicitly) lets the release
    # through; the store remembers that policy, and refuses to run without it once it has gone.
    accepted = tmp_path / "accepted.toml"
    accepted.write_text(f'[vulnerabilities]\nosv_db = "{osv}"\nignore = ["PYSEC-0000-1"]\n')
    assert _refresh(store, None, tool_wheels, EPOCH + 120, policy=accepted).changed
    assert mirror.status(store)["versions"] == [EPOCH, EPOCH + 1]
    accepted.unlink()
    from chiron.errors import SpecError

    with pytest.raises(SpecError, match="the policy this store was refreshed with is missing"):
        _refresh(store, None, tool_wheels, EPOCH + 180)


def test_killed_refresh_resumes_to_the_same_appliance(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    big = make_wheel(upstream.directory, "omega", "1.0", payload=b"#" + os.urandom(3 << 20).hex().encode()[: 3 << 20])
    spec.write_text(spec.read_text().replace('["alpha>=1.0"]', '["alpha>=1.0", "omega"]'))
    upstream.slow[big.name] = 0.05  # ~50 chunks of 64 KiB: a few seconds to kill it in
    store = seeded(tmp_path / "store")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chiron", "mirror", "refresh", str(spec), "--store", str(store), "--json"],
        env={**os.environ, "CHIRON_TOOL_WHEELS": str(tool_wheels), "SOURCE_DATE_EPOCH": str(EPOCH)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # Past the first 1 MiB read, so some of it is on disk when the process dies.
    while upstream.sent[big.name] < 2 << 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert upstream.sent[big.name] >= 2 << 20, "the refresh never got far into the big wheel"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((store / "artifacts").glob(".partial-*")), "killed mid-download: a partial file is left"
    assert not (store / "state.json").exists()

    (partial,) = (store / "artifacts").glob(".partial-*")
    kept = partial.stat().st_size
    assert 0 < kept < big.stat().st_size

    upstream.slow.clear()
    upstream.ranges = []  # the index now honours Range requests
    resumed = _refresh(store, spec, tool_wheels, EPOCH)
    assert resumed.downloaded == 1  # alpha and beta finished before the kill; only omega again
    assert upstream.ranges == [(big.name, kept)]  # continued where the killed run stopped
    assert resumed.bytes_downloaded == big.stat().st_size - kept
    assert not list((store / "artifacts").glob(".partial-*"))
    upstream.ranges = None
    clean = _refresh(seeded(tmp_path / "clean"), spec, tool_wheels, EPOCH)
    assert clean.downloaded == 3
    assert resumed.appliance.read_bytes() == clean.appliance.read_bytes()  # type: ignore[union-attr]


def test_two_refreshes_at_once_are_prevented(tmp_path: Path, spec: Path, tool_wheels: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with (
        _lockfile.hold(store / ".lock", "mirror refresh"),
        pytest.raises(Refused, match=r"holds .*\.lock \(pid \d+, mirror refresh"),
    ):
        _refresh(store, spec, tool_wheels, EPOCH)


def test_restore_a_store_then_refresh_and_upgrade_across_it(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    first = _refresh(seeded(tmp_path / "lost-store"), spec, tool_wheels, EPOCH)
    prefix = tmp_path / "host"
    host.install(_opts(first.appliance, prefix, root_file=keys / "1.root.json"))  # type: ignore[arg-type]
    carried = tmp_path / "usb" / "demo.pex"  # the copy that crossed the gap survives
    carried.parent.mkdir()
    shutil.copyfile(first.appliance, carried)  # type: ignore[arg-type]
    shutil.copyfile(f"{first.appliance}.sig", f"{carried}.sig")
    shutil.rmtree(tmp_path / "lost-store")  # the mirror host burns down

    store = seeded(tmp_path / "restored")
    info = mirror.restore(carried, store, spec=spec, root_file=keys / "1.root.json")
    assert info["next_version"] == EPOCH + 1 and info["wheels"] == 2
    assert info["keys"]["targets"] == [f"file2:{keys}/targets.pem"]  # by URI, never key material
    assert not list(store.rglob("*.pem"))
    upstream.requests.clear()
    again = _refresh(store, None, tool_wheels, EPOCH + 60)
    assert not again.changed and upstream.file_requests() == 0  # the restored store is complete

    make_wheel(upstream.directory, "beta", "1.1")
    nxt = _refresh(store, None, tool_wheels, EPOCH + 120)
    assert nxt.changed and nxt.metadata_version == EPOCH + 1 and nxt.downloaded == 1
    host.upgrade(_opts(nxt.appliance, prefix))  # type: ignore[arg-type]
    assert _installed(prefix, "beta") == "1.1"

    with pytest.raises(Refused, match="already holds a mirror store"):
        mirror.restore(carried, store, spec=spec, root_file=keys / "1.root.json")


def test_restore_without_a_spec_uses_the_appliance_copy(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    first = _refresh(seeded(tmp_path / "old"), spec, tool_wheels, EPOCH)
    store = seeded(tmp_path / "restored")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chiron",
            "mirror",
            "restore",
            str(first.appliance),
            "--store",
            str(store),
            "--root-sha256",  # as the runbook does: the fingerprint given out of band
            _trust.fingerprint((keys / "1.root.json").read_bytes()),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["spec"] == str(store / "spec" / "appliance.toml")
    assert (store / "spec" / "appliance.toml").read_bytes() == spec.read_bytes()
    make_wheel(upstream.directory, "beta", "1.1")
    nxt = _refresh(store, None, tool_wheels, EPOCH + 60)
    assert nxt.changed and nxt.metadata_version == EPOCH + 1


def test_refresh_needs_a_spec_and_one_appliance_per_store(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    from chiron.errors import UsageError

    store = seeded(tmp_path / "store")
    with pytest.raises(UsageError, match="needs the SPEC argument"):
        _refresh(store, None, tool_wheels, EPOCH)
    _refresh(store, spec, tool_wheels, EPOCH)
    other = write_spec(tmp_path / "other", keys=keys, index_url=upstream.url, requirements=["beta"], name="other")
    with pytest.raises(UsageError, match="holds appliance 'demo'"):
        _refresh(store, other, tool_wheels, EPOCH + 60)


def test_replaced_host_installs_the_latest_and_keeps_upgrading(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    """docs/runbooks/disaster-recovery.md section 4: a new host from the latest appliance, the old
    audit log checked on the side, then the next upgrade as usual."""
    from chiron.cli import main

    store = seeded(tmp_path / "store")
    first = _refresh(store, spec, tool_wheels, EPOCH)
    old = tmp_path / "old-host"
    host.install(_opts(first.appliance, old, root_file=keys / "1.root.json"))  # type: ignore[arg-type]
    make_wheel(upstream.directory, "beta", "1.1")
    latest = _refresh(store, None, tool_wheels, EPOCH + 60)

    new = tmp_path / "new-host"
    fingerprint = _trust.fingerprint((keys / "1.root.json").read_bytes())
    host.install(_opts(latest.appliance, new, root_sha256=fingerprint))  # type: ignore[arg-type]
    assert _installed(new, "beta") == "1.1"
    saved = tmp_path / "old-audit"
    saved.mkdir()
    for name in ("audit.jsonl", "audit.head"):
        shutil.copyfile(old / "state" / name, saved / name)
    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify", "--prefix", str(tmp_path / "ignored"), "--state-dir", str(saved)])
    assert exc.value.code == 0

    make_wheel(upstream.directory, "beta", "1.2")
    nxt = _refresh(store, None, tool_wheels, EPOCH + 120, delta_from=latest.appliance)
    host.upgrade(_opts(nxt.delta, new))  # type: ignore[arg-type]
    assert _installed(new, "beta") == "1.2"


def test_refreshed_appliance_rebuilds_byte_for_byte(
    tmp_path: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    """Reproducibility holds for what the mirror signs too (version N+1, SBOM, lock from the store)."""
    from chiron.engines.rebuild import rebuild

    store = seeded(tmp_path / "store")
    _refresh(store, spec, tool_wheels, EPOCH)
    make_wheel(upstream.directory, "beta", "1.1")
    second = _refresh(store, None, tool_wheels, EPOCH + 60)
    upstream.close()  # offline: everything comes from the appliance itself
    report = rebuild(second.appliance, tmp_path / "r.pex", base=spec.parent, tool_wheels=None, cache_dir=tmp_path / "c")  # type: ignore[arg-type]
    assert report.identical, report.differences


def test_prune_keeps_what_the_newest_appliances_need(
    tmp_path: Path, keys: Path, spec: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    from chiron.errors import UsageError

    store, first, second = _two_versions(seeded(tmp_path / "store"), spec, upstream, tool_wheels)
    make_wheel(upstream.directory, "beta", "1.2")
    third = _refresh(store, None, tool_wheels, EPOCH + 120)
    with pytest.raises(UsageError, match="at least 1"):
        mirror.prune(store, 0)
    info = mirror.prune(store, 2)
    assert info["pruned"] == [EPOCH] and info["kept"] == [EPOCH + 1, EPOCH + 2]
    assert not first.appliance.exists() and second.delta.exists()  # type: ignore[union-attr]
    names = {p.name for p in (store / "artifacts" / "sha256").rglob("*") if p.is_file()}
    wheels = {p.name for p in upstream.directory.iterdir()}
    import hashlib

    by_sha = {hashlib.sha256((upstream.directory / w).read_bytes()).hexdigest(): w for w in wheels}
    assert sorted(by_sha[n] for n in names) == [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.1-py3-none-any.whl",
        "beta-1.2-py3-none-any.whl",
    ]
    # The lock history stays; the kept appliances still verify and the store still refreshes.
    assert len(list((store / "locks").glob("*.pylock.toml"))) == 3
    assert mirror.status(store)["versions"] == [EPOCH, EPOCH + 1, EPOCH + 2]
    assert verify(second.appliance, root_file=keys / "1.root.json").ok  # type: ignore[arg-type]
    assert not _refresh(store, None, tool_wheels, EPOCH + 180).changed
    assert third.appliance.exists()  # type: ignore[union-attr]


def test_a_quiet_upstream_still_gets_fresh_metadata(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    """Hosts refuse expired metadata: with nothing new, a refresh re-signs once half the timestamp's
    validity is gone, and says why."""
    spec = write_spec(
        tmp_path / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"], timestamp_expires="2h"
    )
    store = seeded(tmp_path / "store")
    now = int(time.time())
    first = _refresh(store, spec, tool_wheels, now - 5400)  # its timestamp expires in 30 minutes
    renewed = _refresh(store, None, tool_wheels, now)
    assert renewed.changed and renewed.metadata_version == first.metadata_version + 1
    assert renewed.notes and renewed.notes[0].startswith(f"renewed: version {first.metadata_version}'s timestamp")
    assert not _refresh(store, None, tool_wheels, now + 60).changed  # 2 hours left: nothing to do
