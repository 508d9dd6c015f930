"""The detached signature over the whole file, checked by the real ssh-keygen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import ssh_verify

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen missing: .ci/run installs openssh-client"
)


def test_ssh_keygen_accepts_the_signature(appliance: Path, keys: Path) -> None:
    proc = ssh_verify(appliance, appliance.with_name(appliance.name + ".sig"), keys / "allowed_signers")
    assert proc.returncode == 0, proc.stderr
    assert 'Good "chiron-appliance" signature for chiron' in proc.stdout


def test_ssh_keygen_rejects_a_changed_byte(appliance: Path, keys: Path, tmp_path: Path) -> None:
    data = bytearray(appliance.read_bytes())
    data[len(data) // 3] ^= 0x40
    bad = tmp_path / "bad.pex"
    bad.write_bytes(bytes(data))
    proc = ssh_verify(bad, appliance.with_name(appliance.name + ".sig"), keys / "allowed_signers")
    assert proc.returncode != 0


def test_ssh_keygen_rejects_another_key(appliance: Path, other_keys: Path) -> None:
    proc = ssh_verify(appliance, appliance.with_name(appliance.name + ".sig"), other_keys / "allowed_signers")
    assert proc.returncode != 0
