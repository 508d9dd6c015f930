"""Signing keys by URI: an HSM (SoftHSM2) targets key, a 2-of-3 offline root ceremony, root and
targets key rotation with hosts upgrading across it (one skipping a version), a revoked key, an
encrypted file2: key, and the secret: scheme."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from chiron.cli import main
from chiron.engines import host
from chiron.engines.inspect import inspect_archive
from chiron.engines.verify import verify
from chiron.errors import SigningKeyError, VerificationError
from chiron.trust.sshsig import allowed_signers_line

from conftest import do_build
from helpers import ENV_311, ssh_verify, write_spec

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")


def pem(path: Path, password: bytes | None = None) -> Path:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    path.chmod(0o600)
    return path


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def spec_for(directory: Path, keys: Path, index_url: str, *, root: Path, targets: str, version: str = "1.0.0") -> Path:
    """A spec whose root is a directory of N.root.json and whose targets key is the given TOML value."""
    spec = write_spec(
        directory, keys=keys, index_url=index_url, requirements=["beta==1.0"], environments=ENV_311, version=version
    )
    text = spec.read_text().replace(f'root = "{keys}/1.root.json"', f'root = "{root}"')
    text = text.replace(f'keys = ["file2:{keys}/targets.pem"]', f"keys = [{targets}]")
    spec.write_text(text)
    return spec


def new_root_dir(
    tmp: Path, keys: Path, *, targets: list[str], roots: list[Path] | None = None, root_threshold: int = 1
) -> Path:
    d = tmp / "root"
    args = [
        "keys",
        "new-root",
        str(d),
        "--key",
        f"snapshot={keys / 'snapshot.pem'}",
        "--key",
        f"timestamp={keys / 'timestamp.pem'}",
        "--threshold",
        f"root={root_threshold}",
    ]
    for r in roots or [keys / "root.pem"]:
        args += ["--key", f"root={r}"]
    for t in targets:
        args += ["--key", f"targets={t}"]
    assert run(args) == 0
    return d


def signed_root(tmp: Path, keys: Path, targets_keyfile: Path) -> Path:
    """Root v1 naming the given public key as the targets key, signed by the dev root key."""
    root_dir = new_root_dir(tmp, keys, targets=[str(targets_keyfile)])
    assert run(["sign", str(root_dir / "1.root.json"), "--key", f"file2:{keys / 'root.pem'}"]) == 0
    return root_dir


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """One SoftHSM2 token for the module: the PKCS#11 library is loaded once per process and keeps the
    token directory of its first SOFTHSM2_CONF, so every test here must use that one."""
    if not SOFTHSM.exists() or shutil.which("pkcs11-tool") is None:
        pytest.skip("SoftHSM2/opensc missing: .ci/run installs softhsm2 and opensc")
    tmp_path = tmp_path_factory.mktemp("softhsm")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
        monkeypatch.setenv("PYKCS11LIB", str(SOFTHSM))
        monkeypatch.setenv("HSM_PIN", "1234")
        yield _token(tmp_path)


def _token(tmp_path: Path) -> tuple[str, str, Path]:
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "chiron-test", "--pin", "1234", "--so-pin", "5678"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            str(SOFTHSM),
            "--token-label",
            "chiron-test",
            "--login",
            "--pin",
            "1234",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "01",
            "--label",
            "targets",
        ],
        check=True,
        capture_output=True,
    )
    from securesystemslib.signer import HSMSigner

    uri, key = HSMSigner.import_(hsm_keyid=1, token_label="chiron-test")
    keyfile = tmp_path / "hsm-targets.json"
    keyfile.write_text(json.dumps({"keyid": key.keyid, **key.to_dict()}))
    return uri, key.keyid, keyfile


def test_hsm_held_targets_key(softhsm, keys: Path, index, tool_wheels: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    uri, keyid, keyfile = softhsm
    root_dir = signed_root(tmp_path, keys, keyfile)
    spec = spec_for(
        tmp_path / "s",
        keys,
        index.url,
        root=root_dir,
        targets=f'{{ uri = "{uri}", keyid = "{keyid}", secret_env = "HSM_PIN" }}',
    )
    out = do_build(spec, tmp_path / "hsm.pex", tool_wheels, tmp_path / "cache").output
    report = verify(out, root_file=root_dir / "1.root.json")
    assert report.ok, report.problems
    roles = inspect_archive(out)["roles"]
    assert roles["targets"]["signed_by"] == ["hsm"] and roles["targets"]["key_types"] == ["ecdsa"]
    assert roles["targets"]["keyids"] == [keyid]
    # The detached signature was made by the HSM key too (ECDSA SSHSIG), checked by ssh-keygen.
    if shutil.which("ssh-keygen"):
        from tuf.api.metadata import Metadata, Root

        key = Metadata[Root].from_bytes((root_dir / "1.root.json").read_bytes()).signed.keys[keyid]
        allowed = tmp_path / "allowed_signers"
        allowed.write_text(allowed_signers_line("chiron", "chiron-appliance", key))
        proc = ssh_verify(out, Path(f"{out}.sig"), allowed)
        assert proc.returncode == 0, proc.stderr


def test_hsm_wrong_pin_is_a_clear_error(
    softhsm, keys: Path, index, tool_wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    uri, keyid, keyfile = softhsm
    root_dir = signed_root(tmp_path, keys, keyfile)
    spec = spec_for(
        tmp_path / "s",
        keys,
        index.url,
        root=root_dir,
        targets=f'{{ uri = "{uri}", keyid = "{keyid}", secret_env = "HSM_PIN" }}',
    )
    monkeypatch.setenv("HSM_PIN", "0000")
    with pytest.raises(SigningKeyError, match=f"signing targets with key {keyid[:16]}... failed") as exc:
        do_build(spec, tmp_path / "hsm.pex", tool_wheels, tmp_path / "cache")
    assert exc.value.hint and "PIN" in exc.value.hint
    assert not (tmp_path / "hsm.pex").exists()


def test_two_of_three_root_ceremony(
    keys: Path, index, tool_wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    holders = [pem(tmp_path / f"holder{i}.pem") for i in range(3)]
    root_dir = new_root_dir(tmp_path, keys, targets=[str(keys / "targets.pem")], roots=holders, root_threshold=2)
    pending = root_dir / "1.root.json"
    assert run(["keys", "status", str(pending)]) == 1
    assert run(["sign", str(pending), "--key", f"file2:{holders[0]}"]) == 0
    assert "1 of 2 needed" in capsys.readouterr().out
    spec = spec_for(tmp_path / "s", keys, index.url, root=root_dir, targets=f'"file2:{keys / "targets.pem"}"')
    # One signature is not enough: the build refuses and names who is missing.
    with pytest.raises(Exception) as exc:
        do_build(spec, tmp_path / "early.pex", tool_wheels, tmp_path / "cache")
    assert "root v1: threshold not met: root v1 keys: 1 of 2 needed (not yet signed:" in str(exc.value)
    assert not (tmp_path / "early.pex").exists()
    assert run(["sign", str(pending), "--key", f"file2:{holders[2]}"]) == 0
    capsys.readouterr()
    assert run(["keys", "status", str(pending), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["complete"] is True and status["thresholds"]["root v1"] == {"signed": 2, "threshold": 2}
    out = do_build(spec, tmp_path / "ok.pex", tool_wheels, tmp_path / "cache").output
    assert verify(out, root_file=pending).ok
    # A signature by a key that is not a root key is refused before anything is written.
    before = pending.read_bytes()
    assert run(["sign", str(pending), "--key", f"file2:{keys / 'targets.pem'}"]) == 2
    assert "is not a root key" in capsys.readouterr().err
    assert pending.read_bytes() == before


def test_rotation_of_targets_and_root_with_hosts_upgrading_across(
    keys: Path,
    index,
    tool_wheels: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    shutil.copy(keys / "1.root.json", root_dir / "1.root.json")
    old_targets = f"file2:{keys / 'targets.pem'}"
    now = int(time.time())

    def build(version: str, targets: str, epoch: int, name: str) -> Path:
        spec = spec_for(tmp_path / name, keys, index.url, root=root_dir, targets=f'"{targets}"', version=version)
        return do_build(spec, tmp_path / f"{name}.pex", tool_wheels, tmp_path / "cache", epoch=epoch).output

    v1 = build("1.0.0", old_targets, now - 300, "v1")
    # Rotate the targets key: root v2, signed by the (unchanged) root key.
    new_targets = pem(tmp_path / "targets2.pem")
    old_keyid = json.loads((keys / "1.root.json").read_text())["signed"]["roles"]["targets"]["keyids"][0]
    assert (
        run(
            ["keys", "rotate", "targets", "--root-dir", str(root_dir), "--add", str(new_targets), "--revoke", old_keyid]
        )
        == 0
    )
    assert run(["sign", str(root_dir / "2.root.json"), "--key", f"file2:{keys / 'root.pem'}"]) == 0
    # A spec whose trust.root still names 1.root.json cannot use the new key; the hint says why.
    stale = spec_for(
        tmp_path / "stale", keys, index.url, root=root_dir / "1.root.json", targets=f'"file2:{new_targets}"'
    )
    with pytest.raises(SigningKeyError) as refused:
        do_build(stale, tmp_path / "stale.pex", tool_wheels, tmp_path / "cache")
    assert "is not a targets key of the root metadata (root v1;" in refused.value.message
    assert "trust.root must name the DIRECTORY of N.root.json files" in (refused.value.hint or "")
    assert not (tmp_path / "stale.pex").exists()
    v2 = build("1.1.0", f"file2:{new_targets}", now - 200, "v2")
    # Rotate the root key itself: root v3 needs the old root key AND the new one.
    new_root = pem(tmp_path / "root2.pem")
    old_root_id = json.loads((keys / "1.root.json").read_text())["signed"]["roles"]["root"]["keyids"][0]
    assert (
        run(["keys", "rotate", "root", "--root-dir", str(root_dir), "--add", str(new_root), "--revoke", old_root_id])
        == 0
    )
    assert run(["sign", str(root_dir / "3.root.json"), "--key", f"file2:{new_root}"]) == 0
    assert run(["keys", "status", str(root_dir / "3.root.json")]) == 1  # the old root has not signed yet
    assert run(["sign", str(root_dir / "3.root.json"), "--key", f"file2:{keys / 'root.pem'}"]) == 0
    v3 = build("1.2.0", f"file2:{new_targets}", now - 100, "v3")

    step = tmp_path / "host-step"
    skip = tmp_path / "host-skip"
    for prefix in (step, skip):
        host.install(host.InstallOptions(archive=v1, prefix=prefix, root_file=keys / "1.root.json"))
    host.upgrade(host.InstallOptions(archive=v2, prefix=step))
    host.upgrade(host.InstallOptions(archive=v3, prefix=step))
    host.upgrade(host.InstallOptions(archive=v3, prefix=skip))  # v1 -> v3: walks roots 2 and 3
    for prefix in (step, skip):
        info = host.status(prefix, None)
        assert info["current"]["version"] == "1.2.0" and info["metadata"]["root"]["version"] == 3

    # The revoked targets key is no longer accepted by a host that follows the chain.
    rogue_dir = tmp_path / "rogue-root"
    rogue_dir.mkdir()
    shutil.copy(keys / "1.root.json", rogue_dir / "1.root.json")
    spec = spec_for(tmp_path / "rogue", keys, index.url, root=rogue_dir, targets=f'"{old_targets}"', version="9.0.0")
    rogue = do_build(spec, tmp_path / "rogue.pex", tool_wheels, tmp_path / "cache", epoch=now).output
    assert verify(rogue).ok  # valid on its own, by the old root...
    with pytest.raises(VerificationError, match="signature check failed"):
        host.upgrade(host.InstallOptions(archive=rogue, prefix=skip))
    assert not verify(rogue, root_file=root_dir / "3.root.json").ok


def test_rotation_shipped_by_mirror_refresh_as_the_runbook_says(
    keys: Path,
    index,
    tool_wheels: Path,
    seeded,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    """docs/runbooks/compromised-key.md sections 1 to 3 for a store-managed appliance: rotate, sign,
    point trust.root at the directory, `mirror refresh --force`; hosts take it and every later refresh."""
    root_dir = tmp_path / "keys" / "root"
    root_dir.mkdir(parents=True)
    shutil.copy(keys / "1.root.json", root_dir / "1.root.json")
    store = seeded(tmp_path / "store")
    spec_dir = tmp_path / "spec"

    def spec(root: Path, targets: Path) -> Path:
        return spec_for(spec_dir, keys, index.url, root=root, targets=f'"file2:{targets}"')

    def refresh(spec_file: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
        capsys.readouterr()
        args = ["mirror", "refresh", str(spec_file), "--store", str(store), "--force", "--json"]
        code = run([*args, "--tool-wheels", str(tool_wheels)])
        return code, json.loads(capsys.readouterr().out)  # the result, or chiron.error/1

    code, first = refresh(spec(root_dir / "1.root.json", keys / "targets.pem"))
    assert code == 0, first
    prefix = tmp_path / "host"
    host.install(host.InstallOptions(archive=Path(first["appliance"]), prefix=prefix, root_file=keys / "1.root.json"))

    # 1. Rotate the targets key; the root key holder signs root v2.
    new_targets = pem(tmp_path / "new-targets.pem")
    old_keyid = json.loads((root_dir / "1.root.json").read_text())["signed"]["roles"]["targets"]["keyids"][0]
    rotate = ["keys", "rotate", "targets", "--root-dir", str(root_dir), "--add", str(new_targets)]
    assert run([*rotate, "--revoke", old_keyid]) == 0
    assert run(["sign", str(root_dir / "2.root.json"), "--key", f"file2:{keys / 'root.pem'}"]) == 0
    assert run(["keys", "status", str(root_dir / "2.root.json")]) == 0
    # 2. The new key with trust.root still naming one file: refused, and the hint says what to change.
    code, error = refresh(spec(root_dir / "1.root.json", new_targets))
    assert code == 2 and "is not a targets key of the root metadata (root v1;" in error["error"]
    assert "trust.root must name the DIRECTORY of N.root.json files" in error["error"]
    # 3. trust.root names the directory: the refresh signs the store's next version with the new key.
    code, second = refresh(spec(root_dir, new_targets))
    assert code == 0 and second["metadata_version"] > first["metadata_version"], second
    assert verify(Path(second["appliance"]), root_file=root_dir / "2.root.json").ok
    host.upgrade(host.InstallOptions(archive=Path(second["appliance"]), prefix=prefix))
    assert host.status(prefix, None)["metadata"]["root"]["version"] == 2
    # Later refreshes continue the same sequence: the host takes them (no rollback refusal).
    code, third = refresh(spec(root_dir, new_targets))
    assert code == 0 and third["metadata_version"] > second["metadata_version"], third
    host.upgrade(host.InstallOptions(archive=Path(third["appliance"]), prefix=prefix))
    assert host.status(prefix, None)["metadata"]["targets"]["version"] == third["metadata_version"]


def test_encrypted_file2_key(
    keys: Path, index, tool_wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    enc = pem(tmp_path / "targets-enc.pem", password=b"correct horse")
    # key_from_file needs the public half: give it the passphrase through the environment.
    monkeypatch.setenv("TGT_PASS", "correct horse")
    from chiron.trust.keys import public_key_of

    public = public_key_of(f"file2:{enc}", "TGT_PASS")
    assert public is not None
    keyfile = tmp_path / "targets-enc.json"
    keyfile.write_text(json.dumps({"keyid": public.keyid, **public.to_dict()}))
    root_dir = signed_root(tmp_path, keys, keyfile)
    spec = spec_for(
        tmp_path / "s", keys, index.url, root=root_dir, targets=f'{{ uri = "file2:{enc}", secret_env = "TGT_PASS" }}'
    )
    monkeypatch.setenv("TGT_PASS", "wrong")
    with pytest.raises(SigningKeyError, match=r"wrong passphrase \(the PEM could not be decrypted\)"):
        do_build(spec, tmp_path / "a.pex", tool_wheels, tmp_path / "cache")
    monkeypatch.delenv("TGT_PASS")
    with pytest.raises(SigningKeyError, match="environment variable TGT_PASS"):
        do_build(spec, tmp_path / "a.pex", tool_wheels, tmp_path / "cache")
    monkeypatch.setenv("TGT_PASS", "correct horse")
    out = do_build(spec, tmp_path / "a.pex", tool_wheels, tmp_path / "cache").output
    assert verify(out, root_file=root_dir / "1.root.json").ok


def test_secret_store_scheme(
    keys: Path, index, tool_wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CHIRON_TARGETS_PEM", (keys / "targets.pem").read_text())
    spec = spec_for(
        tmp_path / "s", keys, index.url, root=keys / "1.root.json", targets='"secret:env:CHIRON_TARGETS_PEM"'
    )
    out = do_build(spec, tmp_path / "s.pex", tool_wheels, tmp_path / "cache").output
    assert verify(out).ok
    assert inspect_archive(out)["roles"]["targets"]["signed_by"] == ["secret"]
    monkeypatch.delenv("CHIRON_TARGETS_PEM")
    with pytest.raises(SigningKeyError, match="environment variable CHIRON_TARGETS_PEM is not set"):
        do_build(spec, tmp_path / "t.pex", tool_wheels, tmp_path / "cache")
    bad = spec.read_text().replace("secret:env:CHIRON_TARGETS_PEM", "secret:vault:x")
    spec.write_text(bad)
    with pytest.raises(SigningKeyError, match="unknown secret store 'vault'"):
        do_build(spec, tmp_path / "t.pex", tool_wheels, tmp_path / "cache")


class FakeKMS:
    """A TEST DOUBLE of the AWS KMS client: AWS cannot be reached from these machines, so this signs
    digests with a local P-256 key the way KMS would (DER ECDSA over a SHA-256 digest). It exercises
    chiron's awskms: URI handling and securesystemslib's AWSSigner, NOT a real KMS."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.calls: list[dict[str, object]] = []

    def sign(self, **kw: object) -> dict[str, bytes]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        self.calls.append(kw)
        assert kw["MessageType"] == "DIGEST" and kw["SigningAlgorithm"] == "ECDSA_SHA_256"
        digest = kw["Message"]
        assert isinstance(digest, bytes)
        return {"Signature": self.key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))}


def test_awskms_uri_with_a_test_double_of_the_kms_client(
    keys: Path,
    index,
    tool_wheels: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    boto3 = pytest.importorskip("boto3")
    from securesystemslib.signer import SSlibKey

    kms = FakeKMS()
    monkeypatch.setattr(boto3, "client", lambda service, *a, **k: kms)
    public = SSlibKey.from_crypto(kms.key.public_key())
    keyfile = tmp_path / "kms.json"
    keyfile.write_text(json.dumps({"keyid": public.keyid, **public.to_dict()}))
    root_dir = signed_root(tmp_path, keys, keyfile)
    spec = spec_for(
        tmp_path / "s",
        keys,
        index.url,
        root=root_dir,
        targets=f'{{ uri = "awskms:alias/chiron-targets", keyid = "{public.keyid}" }}',
    )
    out = do_build(spec, tmp_path / "kms.pex", tool_wheels, tmp_path / "cache").output
    assert kms.calls and all(c["KeyId"] == "alias/chiron-targets" for c in kms.calls)
    assert verify(out, root_file=root_dir / "1.root.json").ok
    assert inspect_archive(out)["roles"]["targets"]["signed_by"] == ["awskms"]
