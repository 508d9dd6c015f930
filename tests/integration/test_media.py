"""Volumes with real parts: a real pex appliance split, verified volume by volume and joined through the
CLI, its detached signature checked by ssh-keygen; a receive off a filesystem that fails with a real
I/O error part-way (a squashfs image with a damaged block, loop-mounted: the kernel returns EIO,
as a scratched disc does), resumed from an intact copy; a receive and a join into a full disk (a
small tmpfs). The logic on in-memory appliances is in tests/unit/test_media_unit.py."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chiron.archive.reader import read_layout
from chiron.archive.volume import read_header
from chiron.cli import main
from chiron.engines.media import receive
from chiron.errors import EnvironmentProblem
from unit.sim import Sim

from helpers import ssh_verify

MiB = 1 << 20


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _mount(image: Path, at: Path, *options: str) -> None:
    at.mkdir(exist_ok=True)
    r = subprocess.run(["mount", *options, str(image), str(at)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a squashfs image here ({r.stderr.strip()}); CI runs as root and can")


def _umount(at: Path) -> None:
    subprocess.run(["umount", str(at)], check=False, capture_output=True)


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: too small for any appliance here."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}); CI runs as root and can")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_appliance_split_verified_alone_joined_in_any_order(
    appliance: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = shutil.copyfile(appliance, work / "demo-1.0.0.pex")
    shutil.copyfile(appliance.with_name(appliance.name + ".sig"), work / "demo-1.0.0.pex.sig")
    size = src.stat().st_size - 1000  # one volume short: the tool zip, one signed unit, gets a volume of its own
    code, out, err = run(["split", str(src), "--size", str(size), "-o", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    split = json.loads(out)
    vols = [Path(v["file"]) for v in split["volumes"]]
    assert len(vols) >= 2 and all(p.stat().st_size <= size for p in vols)
    assert split["signature"] == str(tmp_path / "out" / "demo-1.0.0.sig")
    fingerprint = hashlib.sha256((keys / "1.root.json").read_bytes()).hexdigest()
    for p in vols:  # each volume verifies alone, as soon as it arrives
        code, out, err = run(["verify", str(p), "--root-sha256", fingerprint], capsys)
        assert code == 0, err
        assert f"volume {vols.index(p) + 1} of {len(vols)} of demo 1.0.0" in out
    # One medium per volume, in shuffled order, in two directories.
    media = [tmp_path / "dvd1", tmp_path / "dvd2"]
    for m in media:
        m.mkdir()
    order = list(vols)
    random.Random(5).shuffle(order)
    for i, p in enumerate(order):
        shutil.copyfile(p, media[i % 2] / p.name)
    shutil.copyfile(tmp_path / "out" / "demo-1.0.0.sig", media[1] / "demo-1.0.0.sig")
    joined = tmp_path / "joined" / "demo-1.0.0.pex"
    code, out, err = run(
        ["join", str(media[1]), str(media[0]), "-o", str(joined), "--root-sha256", fingerprint], capsys
    )
    assert code == 0, err
    assert "every byte verified against the signed targets" in out
    assert joined.read_bytes() == appliance.read_bytes()
    sig = joined.with_name(joined.name + ".sig")
    proc = ssh_verify(joined, sig, keys / "allowed_signers")
    assert proc.returncode == 0, proc.stderr
    # The joined file is a working appliance: it verifies itself.
    run_self = subprocess.run(
        [sys.executable, str(joined), "verify", "--root-sha256", fingerprint],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PEX_ROOT": str(tmp_path / "pex-root")},
    )
    assert run_self.returncode == 0, run_self.stderr


def test_a_tampered_volume_fails_on_the_command_line(
    appliance: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = appliance.stat().st_size - 1000
    assert run(["split", str(appliance), "--size", str(size), "-o", str(tmp_path / "out")], capsys)[0] == 0
    vols = sorted((tmp_path / "out").glob("*.chv"))
    h = read_header(vols[0])
    assert h is not None
    with vols[0].open("r+b") as f:  # a byte of the first wheel, inside volume 1
        wheel = next(m for m in read_layout(appliance).members if m.name.startswith("wheels/"))
        f.seek(vols[0].stat().st_size - h.length + wheel.offset + 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    code, out, err = run(["verify", str(vols[0]), "--root", str(keys / "1.root.json"), "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["volume"]["number"] == 1
    assert report["problems"] == [
        f"member {wheel.name}: sha256 does not match the signed targets (modified or damaged)"
    ]
    assert run(["verify", str(vols[1]), "--root", str(keys / "1.root.json")], capsys)[0] == 0
    code, out, err = run(["join", str(tmp_path / "out"), "-o", str(tmp_path / "j.pex")], capsys)
    assert code == 1 and str(vols[0]) in err and wheel.name in err
    assert not (tmp_path / "j.pex").exists()


def _compressible_appliance(tmp_path: Path) -> tuple[Path, Path]:
    """A signed appliance whose members compress well (so squashfs stores them compressed, and a
    damaged block is an I/O error rather than wrong bytes), and its root."""
    sim = Sim()
    members = {f"files/log{i}.txt": b"".join(b"line %d of log %d\n" % (n, i) for n in range(60_000)) for i in range(6)}
    app = sim.appliance(tmp_path / "demo.pex", members)
    root = tmp_path / "1.root.json"
    root.write_bytes(sim.root)
    return app, root


def test_a_read_error_names_the_offset_and_the_member_and_the_receive_resumes(tmp_path: Path) -> None:
    if shutil.which("mksquashfs") is None:
        pytest.skip("NO mksquashfs: tests/provision.py installs squashfs-tools")
    app, root = _compressible_appliance(tmp_path)
    disc = tmp_path / "disc"
    disc.mkdir()
    shutil.copyfile(app, disc / app.name)
    good = tmp_path / "good.sqfs"
    subprocess.run(
        ["mksquashfs", str(disc), str(good), "-comp", "xz", "-b", "65536", "-noappend", "-quiet", "-no-progress"],
        check=True,
    )
    damaged = tmp_path / "damaged.sqfs"
    image = bytearray(good.read_bytes())
    middle = len(image) // 2
    image[middle : middle + 16] = bytes(b ^ 0xFF for b in image[middle : middle + 16])
    damaged.write_bytes(bytes(image))
    mnt = tmp_path / "mnt"
    inbox = tmp_path / "inbox"
    _mount(damaged, mnt, "-o", "loop,ro")
    try:
        with pytest.raises(EnvironmentProblem) as exc:
            receive(mnt / app.name, inbox, root_file=root)
    finally:
        _umount(mnt)
    message = exc.value.message
    assert f"{mnt / app.name}: read error at offset " in message and "Input/output error" in message
    offset = int(message.split("read error at offset ")[1].split(" ")[0])
    member = next(m for m in read_layout(app).members if m.offset <= offset < m.offset + m.length)
    assert f"(byte {offset - member.offset} of member {member.name})" in message
    assert "run the same command again to resume" in (exc.value.hint or "")
    assert not (inbox / "demo-1.0.0.pex").exists()
    # The drive is cleaned (here: an intact image of the same disc): the same command resumes.
    _mount(good, mnt, "-o", "loop,ro")
    try:
        result = receive(mnt / app.name, inbox, root_file=root)
    finally:
        _umount(mnt)
    out = inbox / "demo-1.0.0.pex"  # named from its signed name and version
    assert result.output == out and out.read_bytes() == app.read_bytes()
    assert 0 < result.resumed_bytes <= offset and result.resumed_bytes + result.received_bytes == app.stat().st_size
    assert sorted(p.name for p in inbox.iterdir()) == [out.name]


def test_a_full_disk_leaves_nothing(tmp_path: Path, tiny_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app, root = _compressible_appliance(tmp_path)  # about 6 MiB: more than the 1 MiB disk
    code, out, err = run(["receive", str(app), "--to", str(tiny_disk / "in"), "--root", str(root), "--json"], capsys)
    assert code == 3, err
    assert "not enough free space" in json.loads(out)["error"]
    assert list((tiny_disk / "in").iterdir()) == []
    assert run(["split", str(app), "--size", "2M", "-o", str(tmp_path / "vols")], capsys)[0] == 0
    code, out, err = run(["join", str(tmp_path / "vols"), "-o", str(tiny_disk / "demo.pex")], capsys)
    assert code == 3 and "not enough free space" in err
    assert list(tiny_disk.iterdir()) == [tiny_disk / "in"]
    code, out, err = run(["split", str(app), "--size", "2M", "-o", str(tiny_disk / "vols")], capsys)
    assert code == 3 and "not enough free space" in err
    assert list((tiny_disk / "vols").iterdir()) == []


def _on_a_terminal(argv: list[str]) -> str:
    """stderr of ``chiron ARGV`` run with a pseudo-terminal as stderr (where a progress bar shows)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chiron", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_receive_shows_progress_on_a_terminal_and_none_with_json(tmp_path: Path) -> None:
    app, root = _compressible_appliance(tmp_path)
    shown = _on_a_terminal(["receive", str(app), "--to", str(tmp_path / "a"), "--root", str(root)])
    assert "receiving demo-1.0.0.pex" in shown
    quiet = _on_a_terminal(["receive", str(app), "--to", str(tmp_path / "b"), "--root", str(root), "--json"])
    assert "receiving" not in quiet
    a, b = tmp_path / "a" / "demo-1.0.0.pex", tmp_path / "b" / "demo-1.0.0.pex"
    assert a.read_bytes() == b.read_bytes() == app.read_bytes()
