"""Volumes on the in-memory appliances of sim.py: split, each volume verified alone, join, receive and
resume, and what is refused (a tampered or truncated volume, a missing one, one of another version,
two copies that differ, an edited header, a size too small)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sim import Sim
from tuf.api.metadata import TargetFile

from chiron.archive import delta
from chiron.archive.reader import read_layout
from chiron.archive.volume import HEAD, MAGIC, VolumeReader, parse_header, read_header, safe_name, volume_file
from chiron.core.text import canonical_json
from chiron.engines.media import join, receive, split, verify_volume
from chiron.engines.media.split import parse_size
from chiron.engines.verify import verify
from chiron.errors import FormatError, Refused, UsageError, VerificationError

MiB = 1 << 20


def _members(seed: int = 1, count: int = 8) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"files/m{i}.bin": rnd.randbytes(rnd.randint(100_000, 700_000)) for i in range(count)}


@pytest.fixture()
def sim() -> Sim:
    return Sim()


@pytest.fixture()
def app(sim: Sim, tmp_path: Path) -> Path:
    return sim.appliance(tmp_path / "demo.pex", _members())


@pytest.fixture()
def root(sim: Sim, tmp_path: Path) -> Path:
    path = tmp_path / "1.root.json"
    path.write_bytes(sim.root)
    return path


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _split(app: Path, out: Path, size: int = MiB) -> list[Path]:
    result = split(app, out, size)
    return [Path(v["file"]) for v in result.volumes]


def test_split_makes_volumes_that_each_verify_alone(app: Path, root: Path, tmp_path: Path) -> None:
    result = split(app, tmp_path / "out", MiB)
    vols = [Path(v["file"]) for v in result.volumes]
    assert len(vols) >= 4
    assert [p.name for p in vols] == [f"demo-1.0.0.part{n:03d}-of-{len(vols):03d}.chv" for n in range(1, len(vols) + 1)]
    assert all(p.stat().st_size <= MiB for p in vols)
    # The ranges tile the whole file, in order.
    headers = [read_header(p) for p in vols]
    assert [h.offset for h in headers if h] == [0, *[h.end for h in headers[:-1] if h]]
    assert headers[-1] is not None and headers[-1].end == app.stat().st_size
    assert all(h is not None and h.sha256 == hashlib.sha256(app.read_bytes()).hexdigest() for h in headers)
    fingerprint = hashlib.sha256(root.read_bytes()).hexdigest()
    for p in vols:
        report = verify_volume(p, root_sha256=fingerprint)
        assert report.ok, report.problems
        assert (report.name, report.version) == ("demo", "1.0.0")
        assert report.volume is not None and report.bytes_hashed == report.volume["length"] > 0
        assert report.as_dict()["volume"]["number"] == vols.index(p) + 1
    # The manifest lists every volume with its size and sha256, as sha256sum would compute it.
    lines = (tmp_path / "out" / "demo-1.0.0.volumes.txt").read_text().splitlines()
    assert lines[0].startswith("# chiron volumes of demo 1.0.0")
    listed = [line.split(" ") for line in lines[1:]]
    assert listed == [[str(p.stat().st_size), hashlib.sha256(p.read_bytes()).hexdigest(), p.name] for p in vols]


def test_a_tampered_volume_is_refused_and_the_others_still_verify(app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    bad = vols[2]
    with VolumeReader(bad) as v:
        h, data_offset = v.header, v.data_offset
    layout = read_layout(app)
    inside = next(m for m in layout.members if h.offset <= m.offset and m.offset + m.length <= h.end)
    _flip(bad, data_offset + inside.offset - h.offset + inside.length // 2)
    report = verify_volume(bad, root_file=root)
    assert not report.ok
    assert report.problems == [f"member {inside.name}: sha256 does not match the signed targets (modified or damaged)"]
    for p in vols:
        if p != bad:
            assert verify_volume(p, root_file=root).ok
    # join names the damaged volume and the member, and writes nothing.
    with pytest.raises(VerificationError) as exc:
        join([tmp_path / "out"], tmp_path / "joined.pex", root_file=root)
    assert str(bad) in exc.value.message and inside.name in exc.value.message
    assert not (tmp_path / "joined.pex").exists() and not list(tmp_path.glob(".joined.pex.*"))


def test_join_in_any_order_from_two_directories_gives_the_same_bytes(app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    a, b = tmp_path / "dvd-a", tmp_path / "dvd-b"
    a.mkdir()
    b.mkdir()
    order = list(vols)
    random.Random(7).shuffle(order)
    for i, p in enumerate(order):  # renamed, too: a volume is known by its header, not its name
        shutil.copyfile(p, (a if i % 2 else b) / f"disc-{i}.chv")
    result = join([b, a], tmp_path / "joined.pex", root_file=root)
    assert (tmp_path / "joined.pex").read_bytes() == app.read_bytes()
    assert os.stat(tmp_path / "joined.pex").st_mode & 0o111
    assert result.bytes_hashed == app.stat().st_size and result.trust_anchor == "--root file"
    assert verify(tmp_path / "joined.pex", root_file=root).ok


def test_a_missing_volume_and_one_of_another_version_are_named(sim: Sim, app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    newer = sim.appliance(tmp_path / "demo-1.1.0.pex", _members(), version="1.1.0+1795485862")
    other = _split(newer, tmp_path / "other")
    assert other[0].name.startswith("demo-1.1.0_1795485862.part001-of-")
    vols[1].unlink()
    shutil.copyfile(other[1], tmp_path / "out" / other[1].name)
    with pytest.raises(UsageError) as exc:
        join([tmp_path / "out"], tmp_path / "joined.pex", root_file=root)
    message = exc.value.message
    assert f"missing volume(s) 2 ({vols[1].name})" in message
    assert f"volume 2 of {len(other)} of demo 1.1.0+1795485862" in message
    # Alone, the other version's volume verifies, and says what it is.
    report = verify_volume(tmp_path / "out" / other[1].name, root_file=root)
    assert report.ok and report.version == "1.1.0+1795485862"


def test_two_copies_of_a_volume_must_be_identical(app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(vols[0], copy / vols[0].name)
    assert join([tmp_path / "out", copy], tmp_path / "joined.pex", root_file=root).size == app.stat().st_size
    _flip(copy / vols[0].name, vols[0].stat().st_size - 10)
    with pytest.raises(Refused, match=r"are both volume 1 of .* but they differ"):
        join([tmp_path / "out", copy], tmp_path / "joined2.pex", root_file=root)
    assert not (tmp_path / "joined2.pex").exists()


def test_a_volume_is_trusted_only_through_the_anchor(app: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    stranger = tmp_path / "stranger.json"
    stranger.write_bytes(Sim().root)
    report = verify_volume(vols[0], root_file=stranger)
    assert not report.ok and report.bytes_hashed == 0
    assert "signature" in report.problems[0] or "root" in report.problems[0]
    with pytest.raises(VerificationError):
        join([tmp_path / "out"], tmp_path / "j.pex", root_file=stranger)


def test_an_edited_header_is_refused(app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    with VolumeReader(vols[1]) as v:
        h, rest = v.header, vols[1].read_bytes()[v.carried_offset :]
    # Another version's name on this volume's bytes: the signed appliance.json says otherwise.
    raw = canonical_json({**h.as_json(), "version": "9.9.9"})
    forged = tmp_path / "forged.chv"
    forged.write_bytes(HEAD.pack(MAGIC, len(raw)) + raw + rest)
    report = verify_volume(forged, root_file=root)
    assert not report.ok and "header names demo 9.9.9" in report.problems[0]
    # A range shifted by one byte: the bytes no longer line up with the signed hashes.
    raw = canonical_json({**h.as_json(), "offset": h.offset + 1})
    forged.write_bytes(HEAD.pack(MAGIC, len(raw)) + raw + rest)
    assert not verify_volume(forged, root_file=root).ok
    # Not canonical, an unknown field, a truncated copy: the structure is refused before anything is trusted.
    for bad in (
        raw.replace(b",", b", ", 1),
        canonical_json({**h.as_json(), "extra": 1}),
        canonical_json({**h.as_json(), "number": 0}),
    ):
        with pytest.raises(FormatError):
            parse_header(bad)
    vols[2].write_bytes(vols[2].read_bytes()[:-100])
    report = verify_volume(vols[2], root_file=root)
    assert not report.ok and "truncated" in report.problems[0]


def test_pieces_let_a_large_member_span_volumes(sim: Sim, root: Path, tmp_path: Path) -> None:
    big = random.Random(3).randbytes(3 * MiB + 12345)
    piece = 256 << 10
    tf = TargetFile(length=len(big), hashes={"sha256": hashlib.sha256(big).hexdigest()}, path="files/big.bin")
    tf.unrecognized_fields["custom"] = {
        "kind": "file",
        "pieces": {
            "size": piece,
            "sha256": [hashlib.sha256(big[i : i + piece]).hexdigest() for i in range(0, len(big), piece)],
        },
    }
    app = sim.appliance(tmp_path / "big.pex", {"files/big.bin": big}, extra_targets={"files/big.bin": tf})
    vols = _split(app, tmp_path / "out")
    member = read_layout(app).member("files/big.bin")
    assert member is not None
    spanning = [
        p for p in vols if (h := read_header(p)) and h.offset < member.offset + member.length and h.end > member.offset
    ]
    assert len(spanning) >= 3
    for p in vols:
        assert verify_volume(p, root_file=root).ok
    # Damage inside one piece is named as that piece.
    h = read_header(spanning[1])
    assert h is not None
    with VolumeReader(spanning[1]) as v:
        data_offset = v.data_offset
    k = (h.offset - member.offset) // piece + 1  # the first piece that starts inside this volume
    _flip(spanning[1], data_offset + member.offset + k * piece - h.offset + 7)
    report = verify_volume(spanning[1], root_file=root)
    assert report.problems == [
        f"piece {k} of member files/big.bin: sha256 does not match the signed targets (modified or damaged)"
    ]


def test_a_size_too_small_names_the_smallest(sim: Sim, app: Path, tmp_path: Path) -> None:
    large = sim.appliance(tmp_path / "large.pex", {"files/large.bin": os.urandom(MiB + MiB // 2)})
    with pytest.raises(UsageError) as exc:
        split(large, tmp_path / "out", MiB)
    assert "member files/large.bin is 1572864 bytes and must be in one volume" in exc.value.message
    smallest = int(exc.value.message.split("use a --size of ")[1].split(" ")[0])
    assert MiB + MiB // 2 < smallest < MiB + MiB // 2 + (64 << 10)  # the member, and a header with its metadata
    fits = split(large, tmp_path / "fits", smallest)  # the size it names is enough
    assert smallest - 64 < max(v["size"] for v in fits.volumes) <= smallest
    with pytest.raises(UsageError, match="at least 1048576 bytes"):
        split(app, tmp_path / "out", 4096)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert parse_size("4480M") == 4480 * MiB and parse_size("4700MB") == 4_700_000_000
    with pytest.raises(UsageError):
        parse_size("lots")


def test_split_refuses_to_mix_two_sets(app: Path, tmp_path: Path) -> None:
    _split(app, tmp_path / "out")
    with pytest.raises(UsageError, match=r"already holds volumes of demo-1\.0\.0"):
        split(app, tmp_path / "out", 2 * MiB)


def test_names_are_in_safe_characters() -> None:
    assert safe_name("1.0.0+1795485862") == "1.0.0_1795485862"
    assert safe_name("../../etc/x y\u202e") == "_._.._etc_x_y_"
    assert safe_name("-rf") == "_rf"
    assert volume_file("a-1", 2, 1000) == "a-1.part0002-of-1000.chv"


def test_receive_an_appliance_and_then_again(app: Path, root: Path, tmp_path: Path) -> None:
    sig = app.with_name(app.name + ".sig")
    sig.write_bytes(b"-----BEGIN SSH SIGNATURE-----\n")
    result = receive(app, tmp_path / "in", root_file=root)
    out = tmp_path / "in" / "demo-1.0.0.pex"  # named from its signed name and version
    assert result.output == out and out.read_bytes() == app.read_bytes()
    assert result.received_bytes == app.stat().st_size and result.resumed_bytes == 0
    assert (tmp_path / "in" / "demo-1.0.0.pex.sig").read_bytes() == sig.read_bytes()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["demo-1.0.0.pex", "demo-1.0.0.pex.sig"]
    again = receive(app, tmp_path / "in", root_file=root)
    assert again.output == out and again.received_bytes == 0 and "already received" in again.notices[0]


def test_a_damaged_file_already_in_place_is_another_file(app: Path, root: Path, tmp_path: Path) -> None:
    """A file with the appliance's name and metadata but other bytes (a copy cut short, a planted file)
    is never reported as already received: every byte is hashed against the signed plan."""
    (tmp_path / "in").mkdir()
    planted = tmp_path / "in" / "demo-1.0.0.pex"
    shutil.copyfile(app, planted)
    _flip(planted, 500_000)
    with pytest.raises(UsageError, match="already exists and is another file"):
        receive(app, tmp_path / "in", root_file=root)


def test_a_linked_signature_on_a_medium_is_not_copied(app: Path, root: Path, tmp_path: Path) -> None:
    """A .sig on a medium that is a symlink (to a private file of this host) or is not an SSH signature
    is left where it is: the untrusted side cannot make receive, join or split publish a local file."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"-----BEGIN SSH SIGNATURE-----\nTOP SECRET\n")
    secret.chmod(0o600)
    medium = tmp_path / "medium"
    medium.mkdir()
    shutil.copyfile(app, medium / "demo.pex")
    (medium / "demo.pex.sig").symlink_to(secret)
    result = receive(medium / "demo.pex", tmp_path / "in", root_file=root)
    assert result.signature is None and not (tmp_path / "in" / "demo-1.0.0.pex.sig").exists()
    vols = _split(app, tmp_path / "vols")
    (tmp_path / "vols" / "demo-1.0.0.sig").symlink_to(secret)
    joined = join([tmp_path / "vols"], tmp_path / "joined.pex", root_file=root)
    assert joined.signature is None and not (tmp_path / "joined.pex.sig").exists()
    (tmp_path / "vols" / "demo-1.0.0.sig").unlink()
    (tmp_path / "vols" / "demo-1.0.0.sig").write_bytes(b"#!/bin/sh\nnot a signature\n")
    assert join(vols, tmp_path / "joined2.pex", root_file=root).signature is None


def test_a_link_planted_in_the_staging_is_not_written_through(app: Path, root: Path, tmp_path: Path) -> None:
    """A symlink where receive keeps its staging file or its lock is refused in one line, and the file
    it points to is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    vols = _split(app, tmp_path / "vols")
    inbox = tmp_path / "in"
    with pytest.raises(VerificationError):  # a first, partial run: makes the staging directory
        _flip(vols[0], vols[0].stat().st_size - 1)
        receive(vols[0], inbox, root_file=root)
    (staged,) = inbox.glob(".chiron-receive/*")
    for name in ("data", "lock"):
        target = staged / name
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(victim)
        with pytest.raises(UsageError, match="symbolic link"):
            receive(vols[1], inbox, root_file=root)
        assert victim.read_bytes() == b"precious"
        target.unlink()


def test_an_absurd_size_is_one_line() -> None:
    with pytest.raises(UsageError, match="--size"):
        parse_size("9" * 400 + ".5T")
    with pytest.raises(UsageError, match="more than any volume needs"):
        parse_size("2000000T")


def test_receive_volumes_from_several_media_in_several_runs(app: Path, root: Path, tmp_path: Path) -> None:
    app.with_name(app.name + ".sig").write_bytes(b"-----BEGIN SSH SIGNATURE-----\n")
    vols = _split(app, tmp_path / "out")
    media = []
    for i, p in enumerate(vols):
        medium = tmp_path / f"disc{i}"
        medium.mkdir()
        shutil.copyfile(p, medium / p.name)
        media.append(medium)
    shutil.copyfile(tmp_path / "out" / "demo-1.0.0.sig", media[-1] / "demo-1.0.0.sig")  # on one disc only
    inbox = tmp_path / "in"
    first = receive(media[-1], inbox, root_file=root)
    assert first.output is None and first.received_volumes == [len(vols)]
    assert first.missing_volumes == list(range(1, len(vols)))
    for medium in media[:-1]:
        last = receive(medium, inbox, root_file=root)
    assert last.output == inbox / "demo-1.0.0.pex" and last.missing_volumes == []
    assert last.resumed_bytes == app.stat().st_size - last.received_bytes > 0  # the kept bytes were checked again
    assert (inbox / "demo-1.0.0.pex").read_bytes() == app.read_bytes()
    assert last.signature == inbox / "demo-1.0.0.pex.sig"  # from the first disc received, kept until the end
    assert sorted(p.name for p in inbox.iterdir()) == ["demo-1.0.0.pex", "demo-1.0.0.pex.sig"]


def test_a_truncated_volume_is_named_and_the_receive_resumes(app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out", 3 * MiB)
    medium = tmp_path / "medium"
    medium.mkdir()
    whole = vols[0].read_bytes()
    # The copy on the medium was cut short (a transfer that broke off): its header promises more.
    (medium / vols[0].name).write_bytes(whole[: len(whole) // 2])
    for p in vols[1:]:
        shutil.copyfile(p, medium / p.name)
    inbox = tmp_path / "in"
    report = verify_volume(medium / vols[0].name, root_file=root)
    assert "truncated" in report.problems[0]
    with pytest.raises(VerificationError):
        receive(medium / vols[0].name, inbox, root_file=root)
    (medium / vols[0].name).write_bytes(whole)
    done = receive(medium, inbox, root_file=root)
    assert done.output == inbox / "demo-1.0.0.pex" and (inbox / "demo-1.0.0.pex").read_bytes() == app.read_bytes()


def test_received_volumes_are_named_from_the_signed_metadata_not_the_header(
    app: Path, root: Path, tmp_path: Path
) -> None:
    """The header's file name is not signed: a set whose headers call it another release's file
    still lands under the name and version its signed metadata gives."""
    medium = tmp_path / "medium"
    medium.mkdir()
    for vol in _split(app, tmp_path / "out"):
        with VolumeReader(vol) as v:
            h, rest = v.header, vol.read_bytes()[v.carried_offset :]
        raw = canonical_json({**h.as_json(), "file": "demo-9.9.9.sh"})
        (medium / vol.name).write_bytes(HEAD.pack(MAGIC, len(raw)) + raw + rest)
    result = receive(medium, tmp_path / "in", root_file=root)
    assert result.output == tmp_path / "in" / "demo-1.0.0.pex" and (result.version, result.file) == (
        "1.0.0",
        "demo-1.0.0.pex",
    )
    assert result.output.read_bytes() == app.read_bytes()
    assert not (tmp_path / "in" / "demo-9.9.9.sh").exists()


@pytest.mark.parametrize("name", ["-rf.pex", ".chiron-receive", "demo-9.9.9.pex", "demo.pyz"])
def test_a_whole_appliance_is_named_from_its_signed_metadata_not_the_medium(
    app: Path, root: Path, tmp_path: Path, name: str
) -> None:
    """The medium's file name is the sender's: it could start with an option's dash, take the name of
    the staging directory, or claim another release. What lands is named from what is signed."""
    medium = tmp_path / "medium"
    medium.mkdir()
    shutil.copyfile(app, medium / name)
    result = receive(medium, tmp_path / "in", root_file=root)
    assert result.output == tmp_path / "in" / "demo-1.0.0.pex" and result.output.read_bytes() == app.read_bytes()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["demo-1.0.0.pex"]


def test_volumes_then_the_whole_file_resume_one_staging(app: Path, root: Path, tmp_path: Path) -> None:
    """The first disc of a set, then the whole appliance from another medium: one staging, and the
    bytes of the disc are kept (hashed again), not received anew."""
    vols = _split(app, tmp_path / "out")
    inbox = tmp_path / "in"
    first = receive(vols[0], inbox, root_file=root)
    assert first.output is None and first.received_volumes == [1]
    whole = receive(app, inbox, root_file=root)
    assert whole.output == inbox / "demo-1.0.0.pex" and whole.output.read_bytes() == app.read_bytes()
    assert whole.resumed_bytes == vols[0].stat().st_size - _data_offset(vols[0]) > 0
    assert whole.received_bytes == app.stat().st_size - whole.resumed_bytes


def test_a_damaged_copy_keeps_what_was_checked_and_resumes(app: Path, root: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    copy = shutil.copyfile(app, good / "demo.pex")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    bad = shutil.copyfile(app, damaged / "demo.pex")
    layout = read_layout(app)
    victim = layout.members[6]
    _flip(bad, victim.offset + 5)
    inbox = tmp_path / "in"
    with pytest.raises(VerificationError) as exc:
        receive(bad, inbox, root_file=root)
    assert f"member {victim.name}: sha256 does not match the signed targets" in exc.value.message
    assert "resumes" in (exc.value.hint or "")
    assert not (inbox / "demo-1.0.0.pex").exists()
    result = receive(copy, inbox, root_file=root)
    assert result.resumed_bytes == victim.offset and result.received_bytes == app.stat().st_size - victim.offset
    assert (inbox / "demo-1.0.0.pex").read_bytes() == app.read_bytes()
    assert not (inbox / ".chiron-receive").exists()


def test_delta_volumes_are_checked_against_their_headers(sim: Sim, app: Path, root: Path, tmp_path: Path) -> None:
    members = _members()
    members["files/m3.bin"] = random.Random(9).randbytes(900_000)
    members["files/m5.bin"] = random.Random(10).randbytes(900_000)
    newer = sim.appliance(tmp_path / "demo-1.1.0.pex", members, version="1.1.0")
    made = delta.make(app, newer, tmp_path / "demo-1.1.0.delta")
    result = split(made.path, tmp_path / "out", MiB)
    vols = [Path(v["file"]) for v in result.volumes]
    assert result.kind == "delta" and len(vols) >= 2 and vols[0].name.startswith("demo-1.1.0.delta.part001-of-")
    with pytest.raises(UsageError, match="a delta is not signed"):
        verify_volume(vols[0], root_file=root)
    joined = join([tmp_path / "out"], tmp_path / "joined.delta")
    assert joined.kind == "delta" and (tmp_path / "joined.delta").read_bytes() == made.path.read_bytes()
    received = receive(tmp_path / "out", tmp_path / "in")
    assert received.output is not None and received.output.read_bytes() == made.path.read_bytes()
    plain_delta = receive(made.path, tmp_path / "in2")
    assert plain_delta.output is not None and plain_delta.output.read_bytes() == made.path.read_bytes()
    _flip(vols[-1], vols[-1].stat().st_size - 3)
    with pytest.raises(VerificationError, match=f"{vols[-1].name}: its bytes do not match the sha256 its header"):
        join([tmp_path / "out"], tmp_path / "joined2.delta")


def test_a_volume_is_not_an_appliance(app: Path, root: Path, tmp_path: Path) -> None:
    vols = _split(app, tmp_path / "out")
    with pytest.raises(UsageError, match=r"is volume 1 of \d+ of demo 1.0.0, not a whole appliance"):
        verify(vols[0], root_file=root)
    with pytest.raises(UsageError, match="already a volume"):
        split(vols[0], tmp_path / "again", MiB)


def test_an_inbox_is_received_as_volumes_arrive(app: Path, root: Path, tmp_path: Path) -> None:
    """A diode's inbox: volumes land one by one, the last one still being written; each run takes what
    has arrived whole, and passes over what has not."""
    vols = _split(app, tmp_path / "out")
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    shutil.copyfile(vols[0], inbox / vols[0].name)
    (inbox / vols[1].name).write_bytes(vols[1].read_bytes()[:1000])  # still arriving
    first = receive(inbox, store, root_file=root)
    assert first.output is None and first.received_volumes == [1]
    assert first.missing_volumes == list(range(2, len(vols) + 1))
    assert any(vols[1].name in w and "still arriving" in w for w in first.warnings)
    for p in vols[1:]:
        shutil.copyfile(p, inbox / p.name)
    second = receive(inbox, store, root_file=root)
    assert second.output == store / "demo-1.0.0.pex" and second.received_volumes == list(range(2, len(vols) + 1))
    assert (store / "demo-1.0.0.pex").read_bytes() == app.read_bytes()


def test_split_is_deterministic(app: Path, tmp_path: Path) -> None:
    """A volume lost on the way can be made again, byte for byte, from the same appliance and size."""
    first, again = _split(app, tmp_path / "a"), _split(app, tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]


def test_the_documented_standard_tools_work_as_written(app: Path, tmp_path: Path) -> None:
    """docs/format.md#volumes: the stdlib join script, and the manifest checked with sha256sum."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "format.md").read_text()
    script = text.split("```python\n# chiron-join.py")[1].split("```")[0]
    (tmp_path / "chiron-join.py").write_text("# chiron-join.py" + script)
    vols = _split(app, tmp_path / "out")
    shuffled = sorted(vols, key=lambda p: hashlib.sha256(p.name.encode()).digest())
    joined = tmp_path / "joined.pex"
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "chiron-join.py"), str(joined), *map(str, shuffled)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert joined.read_bytes() == app.read_bytes()
    missing = subprocess.run(
        [sys.executable, str(tmp_path / "chiron-join.py"), str(tmp_path / "j2"), *map(str, vols[1:])],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "no volume holds byte 0" in missing.stderr
    line = text.split("```sh\nawk")[1].split("\n")[0].replace("demo-1.2.0", "demo-1.0.0")
    check = subprocess.run(["sh", "-c", "awk" + line], cwd=tmp_path / "out", capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(vols), check.stdout + check.stderr


def test_a_damaged_record_of_an_earlier_run_means_receiving_anew(app: Path, root: Path, tmp_path: Path) -> None:
    (tmp_path / "damaged").mkdir()
    bad = shutil.copyfile(app, tmp_path / "damaged" / app.name)
    _flip(bad, read_layout(app).members[5].offset + 1)
    inbox = tmp_path / "in"
    with pytest.raises(VerificationError):
        receive(bad, inbox, root_file=root)
    (state,) = inbox.glob(".chiron-receive/*/state.json")
    assert '"done":[[0,' in state.read_text()  # what was checked before the damage is recorded
    state.write_text('{"format": "chiron-receive/1", "done": "everything"}')
    result = receive(app, inbox, root_file=root)
    assert any("damaged or missing: receiving anew" in n for n in result.notices)
    assert result.resumed_bytes == 0 and result.received_bytes == app.stat().st_size
    assert (inbox / "demo-1.0.0.pex").read_bytes() == app.read_bytes()


def test_an_appliance_of_format_v1_splits_and_joins(tmp_path: Path) -> None:
    """Appliances built before volumes existed need nothing new: the committed v1 fixture."""
    v1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
    app, root = v1 / "appliance-1.0.0.pex", v1 / "1.root.json"
    vols = _split(app, tmp_path / "out")
    assert vols[0].name == "golden-1.0.0.part001-of-001.chv"
    report = verify_volume(vols[0], root_file=root)
    assert report.ok and report.volume is not None and report.volume["length"] == app.stat().st_size
    join([tmp_path / "out"], tmp_path / "joined.pex", root_file=root)
    assert (tmp_path / "joined.pex").read_bytes() == app.read_bytes()


def _data_offset(volume: Path) -> int:
    with VolumeReader(volume) as v:
        return v.data_offset
