"""The detached SSH signature over a whole appliance (``ssh-keygen -Y verify`` checks it)."""

from __future__ import annotations

import base64
import struct

from securesystemslib.signer import Key, Signer, SSlibKey

from chiron.errors import SigningKeyError


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _ssh_mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big") if n else b""
    return _ssh_string(raw)


def _ssh_public_blob(key: Key) -> tuple[str, bytes]:
    if not isinstance(key, SSlibKey):
        raise SigningKeyError(f"key {key.keyid[:16]}...: cannot express it as an SSH key")
    if key.keytype == "ed25519":
        pub = bytes.fromhex(key.keyval["public"])
        return "ssh-ed25519", _ssh_string(b"ssh-ed25519") + _ssh_string(pub)
    if key.keytype in ("ecdsa", "ecdsa-sha2-nistp256") and key.scheme == "ecdsa-sha2-nistp256":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            pk = serialization.load_pem_public_key(key.keyval["public"].encode())
        except (ValueError, TypeError):
            pk = None
        if not isinstance(pk, ec.EllipticCurvePublicKey) or pk.curve.name != "secp256r1":
            raise SigningKeyError(f"key {key.keyid[:16]}...: its public key is not an ECDSA P-256 PEM key")
        point = pk.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        name = b"ecdsa-sha2-nistp256"
        return name.decode(), _ssh_string(name) + _ssh_string(b"nistp256") + _ssh_string(point)
    raise SigningKeyError(f"key {key.keyid[:16]}...: {key.scheme} keys cannot make SSH signatures")


def allowed_signers_line(identity: str, namespace: str, key: Key) -> str:
    """A line for ssh-keygen's allowed_signers file trusting ``key`` for ``namespace``."""
    kind, blob = _ssh_public_blob(key)
    return f'{identity} namespaces="{namespace}" {kind} {base64.b64encode(blob).decode()}\n'


def ssh_signature(signer: Signer, namespace: str, sha512_digest: bytes) -> bytes:
    """An armored SSHSIG over a file whose SHA-512 is given (``ssh-keygen -Y verify`` checks it)."""
    kind, blob = _ssh_public_blob(signer.public_key)
    signed = (
        b"SSHSIG"
        + _ssh_string(namespace.encode())
        + _ssh_string(b"")
        + _ssh_string(b"sha512")
        + _ssh_string(sha512_digest)
    )
    raw = bytes.fromhex(signer.sign(signed).signature)
    if kind == "ssh-ed25519":
        sig = _ssh_string(b"ssh-ed25519") + _ssh_string(raw)
    else:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(raw)
        sig = _ssh_string(kind.encode()) + _ssh_string(_ssh_mpint(r) + _ssh_mpint(s))
    body = (
        b"SSHSIG"
        + struct.pack(">I", 1)
        + _ssh_string(blob)
        + _ssh_string(namespace.encode())
        + _ssh_string(b"")
        + _ssh_string(b"sha512")
        + _ssh_string(sig)
    )
    text = base64.b64encode(body).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return ("-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n").encode()
