"""`chiron keys init`: throw-away Ed25519 keys, mode 0600, and a signed root whose fingerprint is printed."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from chiron.cli import main


def test_keys_init_writes_private_keys_0600_and_prints_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "keys"
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(d)])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    root_bytes = (d / "1.root.json").read_bytes()
    assert f"root fingerprint: {hashlib.sha256(root_bytes).hexdigest()}" in out
    for role in ("root", "targets", "snapshot", "timestamp"):
        pem = d / f"{role}.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    md = Metadata[Root].from_bytes(root_bytes)
    md.verify_delegate(Root.type, md)  # self-signed by its root key
    assert {r: md.signed.roles[r].threshold for r in md.signed.roles} == {
        "root": 1,
        "targets": 1,
        "snapshot": 1,
        "timestamp": 1,
    }
    assert (d / "allowed_signers").read_text().startswith('chiron namespaces="chiron-appliance" ssh-ed25519 ')


def test_keys_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    with pytest.raises(SystemExit):
        main(["keys", "init", str(d)])
    before = (d / "root.pem").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(d)])
    assert exc.value.code == 2
    assert "already holds keys" in capsys.readouterr().err
    assert (d / "root.pem").read_bytes() == before
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(d), "--force", "--json"])
    assert exc.value.code == 0
    assert (d / "root.pem").read_bytes() != before
    assert json.loads(capsys.readouterr().out)["schema"] == "chiron.keys-init/1"


def test_keys_init_bad_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(tmp_path / "k"), "--root-expires", "soon"])
    assert exc.value.code == 2
    assert "--root-expires: 'soon' is not a duration" in capsys.readouterr().err
