"""The mirror store's typed state, the store's claim beside its root chain, and the tool-zip cache's
authentication: damaged or forged input is refused with one line naming the file and the field."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chiron.core.storestate import (
    RESTORE_HINT,
    find_claim,
    parse_state,
    read_state,
    write_claim,
    write_state,
)
from chiron.errors import ExitCode, StoreStateError
from chiron.sources import toolcache

SHA = "ab" * 32

# A state exactly as chiron has always written it (refresh then restore shapes; no new fields).
OLD_STATE: dict[str, Any] = {
    "format": "chiron-mirror/1",
    "name": "demo",
    "spec": "/srv/spec/appliance.toml",
    "base": None,
    "files_dir": None,
    "policy": None,
    "keys": {"targets": ["file2:/k/targets.pem"], "snapshot": ["file2:/k/s.pem"], "timestamp": ["file2:/k/t.pem"]},
    "versions": [
        {
            "metadata_version": 1795485861,
            "version": "1.0.0",
            "created": "2026-11-24T10:00:00Z",
            "file": "appliances/demo-1.0.0-1795485861.pex",
            "sha256": SHA,
            "size": 123,
            "content_key": SHA,
            "lock": "locks/1795485861.pylock.toml",
            "downloaded": 2,
            "bytes_downloaded": 4096,
            "resolved_from": {"spec": SHA, "pages": {"http://i/simple/alpha/": SHA}, "yanked": []},
        },
        {
            "metadata_version": 1795485862,
            "version": "1.0.0",
            "created": "2026-11-25T10:00:00Z",
            "file": "appliances/demo-1.0.0-1795485862.pex",
            "sha256": SHA,
            "size": 124,
            "content_key": SHA,
            "lock": "locks/1795485862.pylock.toml",
            "downloaded": 0,
            "bytes_downloaded": 0,
            "resolved_from": {},
            "pruned": True,
        },
    ],
}


def test_a_state_chiron_wrote_reads_and_writes_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(OLD_STATE))
    state = read_state(path)
    assert state is not None and state.name == "demo" and state.latest.metadata_version == 1795485862
    assert state.versions[0].resolved_from is not None and state.versions[1].resolved_from is None
    write_state(path, state)
    assert json.loads(path.read_text()) == OLD_STATE  # the on-disk format is unchanged
    assert read_state(tmp_path / "none.json") is None


def _without(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def _version(**change: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: {**d, "versions": [{**d["versions"][0], **change}]}


DAMAGED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("no name", _without("name"), "name: required field is missing"),
    ("a list", lambda d: [], "(top level): is list, not an object"),
    ("an empty object", lambda d: {}, "format: is None"),
    ("another format", lambda d: {**d, "format": "chiron-mirror/9"}, "format: is 'chiron-mirror/9'"),
    ("name of the wrong type", lambda d: {**d, "name": 7}, "name: Input should be a valid string"),
    ("no versions", lambda d: {**d, "versions": []}, "versions: List should have at least 1 item"),
    ("a version as text", _version(metadata_version="12"), "versions[0].metadata_version: Input should be"),
    ("a file outside the store", _version(file="../../etc/passwd"), "versions[0].file: '../../etc/passwd'"),
    ("an absolute lock", _version(lock="/etc/shadow"), "versions[0].lock: '/etc/shadow' is not locks/"),
    ("an unknown field", lambda d: {**d, "surprise": 1}, "surprise: unknown field"),
    (
        "versions out of order",
        lambda d: {**d, "versions": list(reversed(d["versions"]))},
        "versions: metadata versions are not strictly increasing",
    ),
]


@pytest.mark.parametrize(("case", "damage", "expect"), DAMAGED, ids=[c[0] for c in DAMAGED])
def test_damaged_state_is_the_documented_refusal(
    tmp_path: Path, case: str, damage: Callable[[dict[str, Any]], Any], expect: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(damage(OLD_STATE)))
    with pytest.raises(StoreStateError) as exc:
        read_state(path)
    assert exc.value.exit_code == ExitCode.REFUSED
    assert exc.value.message.startswith(f"{path}: damaged store state: ") and expect in exc.value.message, case
    assert exc.value.hint == RESTORE_HINT and "\n" not in exc.value.diagnostics()


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"null"])
def test_unreadable_state_is_refused(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(StoreStateError, match="damaged store state"):
        parse_state(raw, tmp_path / "state.json")


def test_a_claim_points_at_a_live_store_only(tmp_path: Path) -> None:
    root_dir, store = tmp_path / "root", tmp_path / "store"
    (store / "tuf" / "root").mkdir(parents=True)
    root_dir.mkdir()
    (store / "tuf" / "root" / "1.root.json").write_bytes(b"root one")
    fingerprint = hashlib.sha256(b"root one").hexdigest()
    assert write_claim(root_dir, store, "demo", fingerprint, 5) is None
    assert find_claim(root_dir, "demo", fingerprint) is None  # no state: nothing to fork
    (store / "state.json").write_text(json.dumps(OLD_STATE))
    found = find_claim(root_dir, "demo", fingerprint)
    assert found is not None and found[0] == store and found[1].latest.metadata_version == 1795485862
    assert find_claim(root_dir, "other", fingerprint) is None
    assert find_claim(root_dir, "demo", "0" * 64) is None  # another root of trust
    (store / "tuf" / "root" / "1.root.json").write_bytes(b"another root")
    assert find_claim(root_dir, "demo", fingerprint) is None  # the store moved to another root
    (root_dir / "chiron-mirror-demo.json").write_text("[not a claim")
    assert find_claim(root_dir, "demo", fingerprint) is None
    # A root directory that cannot be written to (here: not a directory) is a note, not a failure.
    (tmp_path / "file").write_text("")
    assert "cannot record the store" in str(write_claim(tmp_path / "file", store, "demo", fingerprint, 6))


def test_the_tool_cache_key_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    key = toolcache.key_file()
    secret, why = toolcache.secret_key(key)
    assert secret is not None and why is None and len(secret) == 64
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert toolcache.secret_key(key) == (secret, None)  # made once, then read
    os.chmod(key, 0o644)
    secret2, why2 = toolcache.secret_key(key)
    assert secret2 is None and why2 is not None and "not a private file" in why2
    key.unlink()
    key.symlink_to(tmp_path / "elsewhere")
    assert toolcache.secret_key(key)[0] is None  # never followed through a symlink


def test_a_forged_tool_cache_entry_is_not_used(tmp_path: Path) -> None:
    secret = b"1" * 64
    zip_path, record = tmp_path / "k.zip", tmp_path / "k.json"
    zip_path.write_bytes(b"the tool")
    sha = hashlib.sha256(b"the tool").hexdigest()
    members = [{"name": "__main__.py", "size": 1, "sha256": SHA}]

    def write(**fields: Any) -> None:
        data = {"sha256": sha, "members": members, "mac": toolcache.record_mac(secret, "k", sha, members)}
        record.write_text(json.dumps({**data, **fields}))

    write()
    got = toolcache.check_cached(zip_path, record, "k", secret)
    assert isinstance(got, toolcache.ToolZip) and got.sha256 == sha and got.members == members
    # Whoever can write the cache replaces zip and record together; without the key the MAC fails.
    zip_path.write_bytes(b"an attacker's tool")
    forged = hashlib.sha256(b"an attacker's tool").hexdigest()
    write(sha256=forged)
    assert "not authenticated" in str(toolcache.check_cached(zip_path, record, "k", secret))
    write(sha256=forged, mac=toolcache.record_mac(b"2" * 64, "k", forged, members))
    assert "not authenticated" in str(toolcache.check_cached(zip_path, record, "k", secret))
    write()  # the genuine record, but other bytes in the zip
    assert "bytes do not match" in str(toolcache.check_cached(zip_path, record, "k", secret))
    write(members=[{"name": "evil.py"}])  # the signed member list changed
    assert "not authenticated" in str(toolcache.check_cached(zip_path, record, "k", secret))
    record.write_text('{"sha256": 1}')
    assert "unreadable" in str(toolcache.check_cached(zip_path, record, "k", secret))
    write()
    zip_path.write_bytes(b"the tool")
    assert "not authenticated" in str(toolcache.check_cached(zip_path, record, "another-inputs-key", secret))
