"""`chiron keys init`: throw-away Ed25519 keys, mode 0600, and a signed root whose fingerprint is printed."""

from __future__ import annotations

import hashlib
import json
import os
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


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``root``: its mode and its content (a link's target, a file's sha256)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            what = stat.filemode(st.st_mode)
        out[str(p.relative_to(root))] = (st.st_mode, what)
    return out


def test_keys_init_refuses_a_directory_others_can_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for mode in (0o777, 0o770, 0o702):
        d = tmp_path / f"shared-{mode:o}"
        d.mkdir()
        d.chmod(mode)
        with pytest.raises(SystemExit) as exc:
            main(["keys", "init", str(d)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"key directory {d}: mode {mode:04o} lets others write it" in err and f"chmod 700 {d}" in err
        assert len(err.strip().splitlines()) == 1
        assert list(d.iterdir()) == [] and stat.S_IMODE(d.stat().st_mode) == mode  # refused, not changed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_keys_init_refuses_a_directory_of_another_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(d)])
    assert exc.value.code == 2
    assert f"key directory {d}: owned by uid 65534, not by this user" in capsys.readouterr().err
    assert list(d.iterdir()) == []


def test_keys_init_under_umask_000_makes_0700_and_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["keys", "init", str(tmp_path / "a" / "keys")])
    finally:
        os.umask(old)
    assert exc.value.code == 0
    d = tmp_path / "a" / "keys"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.glob("*.pem")} == {
        f"{r}.pem": 0o600 for r in ("root", "targets", "snapshot", "timestamp")
    }


def test_keys_init_writes_through_no_planted_link(tmp_path: Path) -> None:
    """Links planted at the final names and at guessable temporary names are replaced or ignored:
    no private key is written where they point, and none becomes readable by others."""
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("not a key\n")
    (outside / "victim").chmod(0o644)
    for role in ("root", "targets", "snapshot", "timestamp"):
        for name in (f"{role}.pem.tmp", f".{role}.pem.tmp", f"{role}.pem.partial"):
            (d / name).symlink_to(outside / f"stolen-{name}")
    (d / "root.pem").symlink_to(outside / "victim")
    (d / "targets.pem").symlink_to(outside / "stolen-targets")
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(d)])
    assert exc.value.code == 2  # links with key names count as keys: not replaced without --force
    with pytest.raises(SystemExit) as exc:
        main(["keys", "init", str(d), "--force"])
    assert exc.value.code == 0
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "not a key\n"
    for role in ("root", "targets", "snapshot", "timestamp"):
        pem = d / f"{role}.pem"
        assert not pem.is_symlink() and stat.S_IMODE(pem.lstat().st_mode) == 0o600
        assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.fixture()
def hostile(tmp_path: Path) -> Path:
    """A working directory with a key set and every kind of wrong input file."""
    with pytest.raises(SystemExit):
        main(["keys", "init", str(tmp_path / "k")])
    (tmp_path / "bad.json").write_text('{"keytype": "ed25519"}')
    (tmp_path / "noid.json").write_text('{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "00"}}')
    (tmp_path / "fields.json").write_text('{"keyid": "ab", "keytype": "ed25519"}')
    (tmp_path / "broken.json").write_text('{"keyid": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.txt").write_text("not a key at all\n")
    (tmp_path / "big.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * (1 << 20))
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("a file\n")
    return tmp_path


ALL_KEYS = ["--key", "targets=k/targets.pem", "--key", "snapshot=k/snapshot.pem", "--key", "timestamp=k/timestamp.pem"]
NEW_ROOT = ["keys", "new-root", "r", "--key", "root=k/root.pem", *ALL_KEYS]
ROTATE = ["keys", "rotate", "targets", "--root-dir", "k"]
SIGN = ["sign", "k/1.root.json", "--key"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([*NEW_ROOT, "--threshold", "root=abc"], "--threshold root=abc: 'abc' is not a whole number"),
        ([*NEW_ROOT, "--threshold", "root=0"], "--threshold root=0: '0' is not a whole number of at least 1"),
        ([*NEW_ROOT, "--threshold", "root=2"], "role root: threshold 2 is more than its 1 key(s)"),
        ([*NEW_ROOT, "--key", "root=k/root.pem", "--threshold", "root=2"], "threshold 2 is more than its 1 key(s)"),
        ([*ROTATE, "--add", "k/targets.pem", "--threshold", "2"], "role targets: threshold 2 is more than its 1 key"),
        ([*NEW_ROOT, "--threshold", "boss=1"], "--threshold: 'boss=1' is not ROLE=VALUE"),
        ([*NEW_ROOT, "--expires", "5x"], "--expires: '5x' is not a duration"),
        ([*NEW_ROOT, "--expires", "0d"], "--expires: '0d' must be positive"),
        ([*NEW_ROOT, "--expires", "99999999999w"], "--expires: '99999999999w' is too long"),
        ([*NEW_ROOT, "--expires", "600000w"], "--expires: 4200000 days is too far in the future"),
        (["keys", "new-root", "file", "--key", "root=k/root.pem", *ALL_KEYS], "file: is not a directory"),
        (["keys", "new-root", "r", *ALL_KEYS], "--key: no key given for role(s) root"),
        (["keys", "new-root", "r", "--key", "root=fifo", *ALL_KEYS], "--key fifo: is a FIFO, not a regular file"),
        (["keys", "new-root", "r", "--key", "root=/dev/zero", *ALL_KEYS], "--key /dev/zero: is a character device"),
        (["keys", "new-root", "r", "--key", "root=big.pem", *ALL_KEYS], "--key big.pem: 1048603 bytes, more than"),
        (["keys", "new-root", "r", "--key", "root=k", *ALL_KEYS], "--key k: is a directory, not a regular file"),
        ([*ROTATE, "--expires", "never"], "--expires: 'never' is not a duration"),
        ([*ROTATE, "--add", "bad.json"], "--add bad.json: TUF key JSON without a keyid field"),
        ([*ROTATE, "--add", "noid.json"], "--add noid.json: TUF key JSON without a keyid field"),
        ([*ROTATE, "--add", "fields.json"], "--add fields.json: not TUF key JSON (keytype, scheme, keyval)"),
        ([*ROTATE, "--add", "broken.json"], "--add broken.json: not TUF key JSON: Expecting value"),
        ([*ROTATE, "--add", "list.json"], "--add list.json: not a PEM public key, PEM private key or TUF key JSON"),
        ([*ROTATE, "--add", "bad.txt"], "--add bad.txt: not a PEM public key, PEM private key or TUF key JSON"),
        ([*ROTATE, "--add", "missing.pub"], "--add missing.pub: no such file"),
        ([*ROTATE, "--add", "adir"], "--add adir: is a directory, not a regular file"),
        ([*ROTATE, "--add", "fifo"], "--add fifo: is a FIFO, not a regular file"),
        ([*ROTATE, "--threshold", "0"], "--threshold 0: a threshold is at least 1"),
        ([*ROTATE, "--threshold", "abc"], "Invalid value for '--threshold'"),
        ([*ROTATE, "--revoke", "0123"], "--revoke 0123...: not a targets key of 1.root.json"),
        (["keys", "rotate", "boss", "--root-dir", "k"], "unknown role 'boss'"),
        (["keys", "rotate", "targets", "--root-dir", "file"], "file: is not a directory"),
        (["keys", "rotate", "targets", "--root-dir", "adir"], "--root-dir adir: no N.root.json to rotate from"),
        (["keys", "status", "fifo"], "root metadata fifo: is a FIFO, not a regular file"),
        (["keys", "status", "adir"], "root metadata adir: is a directory, not a regular file"),
        (["keys", "status", "/dev/zero"], "root metadata /dev/zero: is a character device"),
        (["keys", "status", "missing.json"], "root metadata missing.json: no such file"),
        (["keys", "status", "bad.txt"], "bad.txt: not valid root metadata"),
        ([*SIGN, "nonsense"], "key 'nonsense': not a private-key URI"),
        ([*SIGN, "foo:bar"], "key foo:bar: unknown scheme 'foo'"),
        ([*SIGN, "file2:"], "key 'file2:': not a private-key URI"),
        ([*SIGN, "file2:missing.pem"], "key file missing.pem: no such file"),
        ([*SIGN, "file2:fifo"], "key file fifo: is a FIFO, not a regular file"),
        ([*SIGN, "file2:adir"], "key file adir: is a directory, not a regular file"),
        ([*SIGN, "file2:/dev/zero"], "key file /dev/zero: is a character device"),
        ([*SIGN, "file2:bad.txt"], "key file2:bad.txt: not a PEM private key"),
        ([*SIGN, "secret:env:CHIRON_NO_SUCH_VAR"], "environment variable CHIRON_NO_SUCH_VAR is not set"),
        ([*SIGN, "hsm:"], "key 'hsm:': not a private-key URI"),
        ([*SIGN, "file2:k/targets.pem"], "is not a root key of 1.root.json"),
        (["sign", "fifo", "--key", "file2:k/root.pem"], "root metadata fifo: is a FIFO"),
        (["sign", "adir", "--key", "file2:k/root.pem"], "root metadata adir: is a directory"),
        (["sign", "bad.txt", "--key", "file2:k/root.pem"], "bad.txt: not TUF metadata"),
        (["keys", "init", "file"], "key directory file: is not a directory"),
        (["keys", "init", "fifo"], "key directory fifo: is not a directory"),
        (["keys", "init", "new", "--root-expires", "5x"], "--root-expires: '5x' is not a duration"),
        (["keys", "init", "new", "--root-expires", "99999999999w"], "--root-expires: '99999999999w' is too long"),
    ],
)
def test_hostile_option_values_give_one_line_and_change_nothing(
    hostile: Path, args: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(hostile)
    monkeypatch.delenv("CHIRON_NO_SUCH_VAR", raising=False)
    before = _tree(hostile)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or "Usage:" in err  # typer's own usage box for non-integers
    assert _tree(hostile) == before
