"""Operator paths of the mirror (docs/runbooks/mirror-refresh.md, disaster-recovery.md): a key
rotation shipped from the store while build refuses to fork it, a restore without --spec, a mirror
host set up from an appliance, an index that is down, a checkout in the working directory, a tampered
tool cache, damaged store state, release versions and the fingerprints to publish."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from chiron.cli import main
from chiron.engines import host, mirror
from chiron.engines.build import BuildOptions, build
from chiron.engines.verify import verify
from chiron.errors import Refused, SigningKeyError, UsageError
from chiron.sources.toolcache import cached_tool_zip
from chiron.trust import metadata as _trust

from helpers import LocalIndex, make_wheel, write_spec

EPOCH = int(time.time()) - 3600  # recent: the metadata must still be valid when hosts verify it


def _refresh(store: Path, spec: Path | None, tool_wheels: Path | None, epoch: int, **kw) -> mirror.RefreshResult:  # type: ignore[no-untyped-def]
    return mirror.refresh(
        mirror.RefreshOptions(
            store=store, spec=spec, tool_wheels=tool_wheels, source_date_epoch=epoch, show_progress=False, **kw
        )
    )


def _opts(archive: Path, prefix: Path, **kw) -> host.InstallOptions:  # type: ignore[no-untyped-def]
    return host.InstallOptions(archive=archive, prefix=prefix, **kw)


def _key_dir(directory: Path, keys: Path) -> Path:
    """A root chain directory of its own (the session's key folder is shared by every test)."""
    directory.mkdir(parents=True)
    for name in ("root.pem", "targets.pem", "snapshot.pem", "timestamp.pem", "1.root.json"):
        shutil.copy(keys / name, directory / name)
    return directory


def _rotate_targets(directory: Path) -> str:
    """Root N+1 in ``directory`` with a new targets key (targets-N+1.pem), signed by the root key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey
    from tuf.api.metadata import Metadata, Root

    chain = _trust.load_root_chain(directory)
    root = Metadata[Root].from_bytes(chain[-1])
    version = root.signed.version + 1
    new = ed25519.Ed25519PrivateKey.generate()
    pem = f"targets-{version}.pem"
    (directory / pem).write_bytes(
        new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for keyid in list(root.signed.roles["targets"].keyids):
        root.signed.revoke_key(keyid, "targets")
    root.signed.add_key(SSlibKey.from_crypto(new.public_key()), "targets")
    root.signed.version = version
    root.signatures.clear()
    root.sign(CryptoSigner(load_pem_private_key((directory / "root.pem").read_bytes(), None)))  # type: ignore[arg-type]
    (directory / f"{version}.root.json").write_bytes(_trust.to_bytes(root))
    return pem


def _installed_version(prefix: Path) -> str:
    return str(host.status(prefix, None)["current"]["version"])


def test_a_rotation_ships_from_the_store_and_build_refuses_to_fork(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path, session_cache: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    root_dir = _key_dir(tmp_path / "keys", keys)
    spec = write_spec(tmp_path / "spec", keys=root_dir, index_url=upstream.url, requirements=["alpha>=1.0"])
    spec.write_text(spec.read_text().replace(f'root = "{root_dir}/1.root.json"', f'root = "{root_dir}"'))
    store = seeded(tmp_path / "store")
    first = _refresh(store, spec, tool_wheels, EPOCH)
    assert first.version == f"1.0.0+{EPOCH}" and first.metadata_version == EPOCH
    claim = json.loads((root_dir / "chiron-mirror-demo.json").read_text())
    assert claim["store"] == str(store) and claim["metadata_version"] == EPOCH
    prefix = tmp_path / "host"
    host.install(_opts(first.appliance, prefix, root_file=root_dir / "1.root.json"))  # type: ignore[arg-type]

    # The rotation: root 2 with a new targets key; the spec names the new key.
    new_key = _rotate_targets(root_dir)
    spec.write_text(spec.read_text().replace("targets.pem", new_key))
    out = tmp_path / "dist" / "rotated.pex"
    bopts = BuildOptions(spec=spec, output=out, tool_wheels=tool_wheels, cache_dir=session_cache, show_progress=False)
    with pytest.raises(Refused) as exc:
        build(bopts)
    assert f"mirror store {store} signs demo under this root (metadata version {EPOCH})" in exc.value.message
    assert exc.value.hint and f"chiron mirror refresh --store {store} --force" in exc.value.hint
    assert not out.exists() and not out.parent.exists()  # refused before anything was written

    # Shipped from the store instead: a version above the current time, under root 2.
    before = int(time.time())
    rotated = _refresh(store, None, tool_wheels, EPOCH + 60, force=True)
    assert rotated.changed and rotated.metadata_version > before
    assert rotated.root["newest_root"] == {
        "version": 2,
        "sha256": _trust.fingerprint((root_dir / "2.root.json").read_bytes()),
    }
    assert rotated.root["root_fingerprint"] == _trust.fingerprint((root_dir / "1.root.json").read_bytes())
    host.upgrade(_opts(rotated.appliance, prefix))  # type: ignore[arg-type]
    assert host.status(prefix, None)["metadata"]["root"]["version"] == 2
    make_wheel(upstream.directory, "beta", "1.1")
    nxt = _refresh(store, None, tool_wheels, EPOCH + 120)
    assert nxt.metadata_version == rotated.metadata_version + 1  # the store counts on by one
    host.upgrade(_opts(nxt.appliance, prefix))  # type: ignore[arg-type]

    # A rotation shipped with chiron build where the store's record is not (another copy of the root
    # directory): hosts that install the build still accept the store's next refresh.
    (root_dir / "chiron-mirror-demo.json").unlink()
    newer_key = _rotate_targets(root_dir)
    spec.write_text(spec.read_text().replace(new_key, newer_key).replace('version = "1.0.0"', 'version = "1.0.1"'))
    # Built in the very second of the store's last version: the same version number with other content
    # is refused as such (python-tuf alone reports a hash mismatch), and nothing changes on the host.
    same = build(dataclasses.replace(bopts, source_date_epoch=nxt.metadata_version))
    with pytest.raises(Refused, match="re-signed with a reused version number"):
        host.upgrade(_opts(same.output, prefix))
    same.output.unlink()
    while int(time.time()) <= nxt.metadata_version:  # a real build comes later than the store's last version
        time.sleep(0.2)
    built = build(bopts)
    host.upgrade(_opts(built.output, prefix))
    shipped = verify(built.output, root_file=root_dir / "1.root.json").roles["targets"]["version"]
    after = _refresh(store, None, tool_wheels, EPOCH + 180, force=True)
    assert after.metadata_version > shipped and after.version == f"1.0.1+{after.metadata_version}"
    host.upgrade(_opts(after.appliance, prefix))  # type: ignore[arg-type]
    assert _installed_version(prefix) == after.version


def test_after_a_rotation_the_key_error_says_what_to_do(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path
) -> None:
    """docs/spec.md: after a rotation trust.root must name the chain directory."""
    root_dir = _key_dir(tmp_path / "keys", keys)
    new_key = _rotate_targets(root_dir)
    spec = write_spec(tmp_path / "spec", keys=root_dir, index_url=upstream.url, requirements=["alpha>=1.0"])
    opts = BuildOptions(
        spec=spec, output=tmp_path / "a.pex", tool_wheels=tool_wheels, cache_dir=tmp_path / "c", show_progress=False
    )
    spec.write_text(spec.read_text().replace("targets.pem", new_key))  # trust.root still names 1.root.json
    with pytest.raises(SigningKeyError) as exc:
        build(opts)
    assert "is not a targets key of the root metadata" in exc.value.message
    assert exc.value.hint and "trust.root must name the DIRECTORY of N.root.json files" in exc.value.hint
    assert f"here {root_dir}, which holds root version 2" in exc.value.hint
    text = spec.read_text().replace(f'root = "{root_dir}/1.root.json"', f'root = "{root_dir}"')
    spec.write_text(text.replace(new_key, "targets.pem"))  # the chain directory, but the revoked key
    with pytest.raises(SigningKeyError) as exc:
        build(opts)
    assert exc.value.hint and "replace a revoked key's URI with its successor's" in exc.value.hint
    assert not (tmp_path / "c").exists() and not (tmp_path / "a.pex").exists()


def test_restore_without_spec_checks_first_and_refreshes(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    """docs/runbooks/disaster-recovery.md section 3, with a spec whose paths are relative (as the
    default bundle's are): the restore refuses up front, then works with --base, and the refresh
    after it needs no tool wheels."""
    project = tmp_path / "project"
    shutil.copytree(keys, project / "keys")
    spec = write_spec(project / "spec", keys=Path("../keys"), index_url=upstream.url, requirements=["alpha>=1.0"])
    first = _refresh(seeded(tmp_path / "lost"), spec, tool_wheels, EPOCH)
    anchor = project / "keys" / "1.root.json"

    store = tmp_path / "restored"
    with pytest.raises(UsageError) as exc:
        mirror.restore(first.appliance, store, root_file=anchor)  # type: ignore[arg-type]
    assert "trust.roles.targets.keys[0]: key file" in exc.value.message and "does not exist" in exc.value.message
    assert exc.value.hint and "--base DIR" in exc.value.hint
    assert not (store / "state.json").exists() and not (store / "spec").exists() and not (store / "locks").exists()

    info = mirror.restore(first.appliance, store, base=project / "spec", root_file=anchor)  # type: ignore[arg-type]
    assert info["root"] is None and info["spec"] == str(store / "spec" / "appliance.toml")
    upstream.requests.clear()
    same = _refresh(store, None, None, EPOCH + 60)  # no tool wheels: the appliance's tool
    assert not same.changed and upstream.file_requests() == 0
    assert any("the tool of version" in n and "is reused" in n for n in same.notes)
    make_wheel(upstream.directory, "beta", "1.1")
    nxt = _refresh(store, None, None, EPOCH + 120)
    assert nxt.changed and nxt.metadata_version == EPOCH + 1
    report = verify(nxt.appliance, root_file=anchor)  # type: ignore[arg-type]
    assert report.ok and report.version == f"1.0.0+{EPOCH + 1}"


def test_restore_without_the_root_on_this_host_signs_with_the_carried_chain(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    shutil.copytree(keys, project / "keys")
    spec = write_spec(project / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])
    spec.write_text(spec.read_text().replace(f'root = "{keys}/1.root.json"', 'root = "../keys/1.root.json"'))
    first = _refresh(seeded(tmp_path / "lost"), spec, tool_wheels, EPOCH)
    store = seeded(tmp_path / "restored")
    info = mirror.restore(first.appliance, store, root_file=keys / "1.root.json")  # type: ignore[arg-type]
    assert info["root"] == str(store / "tuf" / "root")
    assert any("is not on this host" in n for n in info["notices"])
    assert mirror.status(store)["root_fingerprint"] == _trust.fingerprint((keys / "1.root.json").read_bytes())
    make_wheel(upstream.directory, "beta", "1.1")
    nxt = _refresh(store, None, tool_wheels, EPOCH + 60)
    assert nxt.changed and verify(nxt.appliance, root_file=keys / "1.root.json").ok  # type: ignore[arg-type]


def test_a_mirror_host_is_set_up_from_an_appliance(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded, pex_root: Path
) -> None:  # type: ignore[no-untyped-def]
    """docs/runbooks/mirror-refresh.md section 0: `./chiron.pex mirror init`, then refreshes from the
    same file with no tool wheels (a spec with a fixed lock, as the default bundle's)."""
    from chiron.engines.lock import lock as make_lock

    spec = write_spec(
        tmp_path / "spec",
        keys=keys,
        index_url=upstream.url,
        requirements=["alpha>=1.0"],
        extra_python='lock = "pylock.toml"',
    )
    make_lock(spec, cache_dir=tmp_path / "lock-cache")
    first = _refresh(seeded(tmp_path / "origin"), spec, tool_wheels, EPOCH)
    appliance = first.appliance
    assert appliance is not None
    env = {k: v for k, v in os.environ.items() if k not in ("CHIRON_TOOL_WHEELS", "SOURCE_DATE_EPOCH")}
    store = tmp_path / "mirror-host" / "store"

    def run(*argv: str) -> dict:  # type: ignore[type-arg]
        proc = subprocess.run(
            [sys.executable, str(appliance), *argv, "--json"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    fingerprint = _trust.fingerprint((keys / "1.root.json").read_bytes())
    info = run("mirror", "init", "--store", str(store), "--root-sha256", fingerprint)
    assert info["schema"] == "chiron.mirror-restore/1" and info["metadata_version"] == EPOCH
    assert info["spec"] == str(store / "spec" / "appliance.toml") and info["root_fingerprint"] == fingerprint
    assert (store / "spec" / "pylock.toml").read_bytes() == (store / "locks" / f"{EPOCH}.pylock.toml").read_bytes()
    same = run("mirror", "refresh", "--store", str(store))
    assert not same["changed"] and any("is reused" in n for n in same["notes"])
    forced = run("mirror", "refresh", "--store", str(store), "--force")
    assert forced["changed"] and forced["metadata_version"] == EPOCH + 1
    anchor = keys / "1.root.json"
    report = verify(Path(forced["appliance"]), root_file=anchor)
    tool = verify(appliance, root_file=anchor).targets_meta["_archive/tool.zip"]
    assert report.ok and report.targets_meta["_archive/tool.zip"] == tool  # the same chiron, signed again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_index_is_a_network_failure(tmp_path: Path, keys: Path, tool_wheels: Path, seeded) -> None:  # type: ignore[no-untyped-def]
    """Exit 3 naming the URL (a scheduler alerts "network"), never exit 2 with a hint to change a spec."""
    url = f"http://127.0.0.1:{_free_port()}/simple"
    spec = write_spec(tmp_path / "spec", keys=keys, index_url=url, requirements=["alpha>=1.0"])
    store = seeded(tmp_path / "store")
    proc = subprocess.run(
        [sys.executable, "-m", "chiron", "mirror", "refresh", str(spec), "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "CHIRON_TOOL_WHEELS": str(tool_wheels)},
    )
    assert proc.returncode == 3, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert f"cannot reach the package index at {url}/alpha/" in error and "allow_sdists" not in error
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not (store / "state.json").exists()


def test_the_tool_builds_in_a_checkout_and_a_tampered_cache_is_rebuilt(
    tmp_path: Path, tool_wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pex runs in a private working directory (a `chiron` folder here is not the requirement), and a
    cache entry replaced together with its record is detected and never signed."""
    checkout = tmp_path / "checkout"
    (checkout / "chiron").mkdir(parents=True)
    (checkout / "chiron" / "pyproject.toml").write_text('[project]\nname = "chiron"\nversion = "9"\n')
    monkeypatch.chdir(checkout)
    wheels = Path(os.path.relpath(tool_wheels, checkout))  # relative, as typed on a command line
    cache = tmp_path / "cache"

    def tool():  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory() as work:
            return cached_tool_zip(
                fmt="pex", wheels=wheels, shebang="/usr/bin/env python3", platforms=[], cache_dir=cache, work=Path(work)
            )

    first = tool()
    assert first.note is None and first.path.parent == cache / "tool" and first.path.is_file()
    stamp = first.path.stat().st_mtime_ns
    assert tool().sha256 == first.sha256 and first.path.stat().st_mtime_ns == stamp  # from the cache

    # Whoever can write the cache replaces the zip and its record together (without the key).
    evil = tmp_path / "evil.zip"
    shutil.copyfile(first.path, evil)
    with zipfile.ZipFile(evil, "a") as z:
        z.writestr("payload/evil.py", "print('owned')\n")
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    shutil.copyfile(evil, first.path)
    record = first.path.with_suffix(".json")
    forged = json.loads(record.read_text())
    record.write_text(json.dumps({**forged, "sha256": sha}))
    rebuilt = tool()
    assert rebuilt.note and "was not used (its record is not authenticated" in rebuilt.note
    assert rebuilt.sha256 == first.sha256 and hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256


STATE = {
    "format": "chiron-mirror/1",
    "spec": "/nowhere/appliance.toml",
    "keys": {"targets": ["file2:/k"], "snapshot": ["file2:/k"], "timestamp": ["file2:/k"]},
    "versions": [
        {
            "metadata_version": 5,
            "version": "1.0.0+5",
            "file": "appliances/demo-1.0.0-5.pex",
            "sha256": "0" * 64,
            "size": 1,
            "content_key": "0" * 64,
            "lock": "locks/5.pylock.toml",
        }
    ],
}


def test_damaged_store_state_is_refused_by_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tool_wheels: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    state = store / "state.json"
    state.write_text(json.dumps(STATE))  # no "name"
    before = state.read_bytes()
    for argv in (
        ["mirror", "status", "--store", str(store)],
        ["mirror", "prune", "--store", str(store)],
        ["mirror", "refresh", "--store", str(store), "--tool-wheels", str(tool_wheels)],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 4, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{state}: damaged store state: name: required field is missing" in err
        assert "restore the store from the last appliance with chiron mirror restore" in err
    assert state.read_bytes() == before and sorted(p.name for p in store.iterdir()) == [".lock", "state.json"]


def test_a_build_time_that_would_expire_the_metadata_is_refused_before_anything_is_written(
    tmp_path: Path, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(tmp_path / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])
    store = seeded(tmp_path / "store")
    old = int(time.time()) - 3 * 86400  # the timestamp role is valid for 1 day
    with pytest.raises(UsageError) as exc:
        _refresh(store, spec, tool_wheels, old)
    built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old))
    assert exc.value.message.startswith(f"role timestamp: metadata built at {built_at} with expires = 1d")
    assert "would expire at" in exc.value.message and "SOURCE_DATE_EPOCH" in str(exc.value.hint)
    assert upstream.file_requests() == 0 and not (store / "state.json").exists()
    assert not (store / "artifacts" / "sha256").exists() and not (store / "locks").exists()


def test_releases_tell_themselves_apart_and_warnings_are_given(
    tmp_path: Path,
    keys: Path,
    upstream: LocalIndex,
    tool_wheels: Path,
    seeded,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write_spec(tmp_path / "spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])
    spec.write_text(spec.read_text().replace("[trust]\n", '[trust]\ncarry_interval = "3d"\n', 1))
    store = seeded(tmp_path / "store")
    first = _refresh(store, spec, tool_wheels, EPOCH)
    assert first.version == f"1.0.0+{EPOCH}"
    assert any(
        "trust.roles.timestamp.expires (1d) is shorter than trust.carry_interval (3d)" in w for w in first.warnings
    )
    assert not any("snapshot" in w for w in first.warnings)  # 7 days: fits
    fingerprint = _trust.fingerprint((keys / "1.root.json").read_bytes())
    assert first.root == {"root_fingerprint": fingerprint, "newest_root": {"version": 1, "sha256": fingerprint}}

    # A clock behind the newest version: warned; printed with the fingerprint to publish.
    argv = ["mirror", "refresh", "--store", str(store), "--tool-wheels", str(tool_wheels)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--source-date-epoch", str(EPOCH - 600)])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert f"root fingerprint: {fingerprint}" in out
    assert f"is before version {EPOCH} was signed" in err and "warning: " in err

    make_wheel(upstream.directory, "beta", "1.1")
    second = _refresh(store, None, tool_wheels, EPOCH + 120)
    assert second.changed and second.version == f"1.0.0+{second.metadata_version}"
    assert Version(second.version) > Version(first.version) > Version("1.0.0")
    prefix = tmp_path / "host"
    host.install(_opts(first.appliance, prefix, root_file=keys / "1.root.json"))  # type: ignore[arg-type]
    assert _installed_version(prefix) == first.version
    host.upgrade(_opts(second.appliance, prefix))  # type: ignore[arg-type]  # upgrade's "older version" check
    assert _installed_version(prefix) == second.version
    status = mirror.status(store)
    assert status["latest"]["version"] == second.version and status["root_fingerprint"] == fingerprint
    assert status["latest"]["root_version"] == 1
    assert second.appliance.name == f"demo-1.0.0-{second.metadata_version}.pex"  # type: ignore[union-attr]
