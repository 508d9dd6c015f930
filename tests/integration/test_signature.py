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


def test_a_key_that_cannot_make_an_ssh_signature_is_a_clear_error() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from securesystemslib.signer import SSlibKey

    from chiron.errors import SigningKeyError
    from chiron.trust.sshsig import allowed_signers_line

    def pem(public: object) -> str:
        return public.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    p384 = pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    for public in (p384, "not a PEM key"):  # key JSON that claims P-256 but holds something else
        lying = SSlibKey("ab" * 32, "ecdsa", "ecdsa-sha2-nistp256", {"public": public})
        with pytest.raises(SigningKeyError, match=r"key abababababababab\.\.\.: its public key is not an ECDSA P-256"):
            allowed_signers_line("chiron", "chiron-appliance", lying)
    rsa_key = SSlibKey(
        "cd" * 32, "rsa", "rsassa-pss-sha256", {"public": pem(rsa.generate_private_key(65537, 2048).public_key())}
    )
    with pytest.raises(SigningKeyError, match="rsassa-pss-sha256 keys cannot make SSH signatures"):
        allowed_signers_line("chiron", "chiron-appliance", rsa_key)
    p256 = SSlibKey(
        "ef" * 32, "ecdsa", "ecdsa-sha2-nistp256", {"public": pem(ec.generate_private_key(ec.SECP256R1()).public_key())}
    )
    assert allowed_signers_line("chiron", "chiron-appliance", p256).startswith(
        'chiron namespaces="chiron-appliance" ecdsa-sha2-nistp256 '
    )
