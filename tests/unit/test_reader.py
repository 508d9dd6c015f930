"""ArchiveReader: structure, bounds and checked reads, on appliances written in memory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sim import Sim

from chiron.archive.reader import ArchiveReader, check_tiling, read_layout
from chiron.errors import FormatError, UsageError, VerificationError


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    return Sim().appliance(tmp_path / "a.pex", {"files/hello.txt": b"hello\n", "files/big.bin": os.urandom(3 << 20)})


def test_a_written_appliance_tiles_exactly(archive: Path) -> None:
    layout = read_layout(archive)
    assert check_tiling(layout) == []
    assert layout.size == archive.stat().st_size
    names = [m.name for m in layout.members]
    assert names[:2] == ["appliance.json", "files/hello.txt"] and "metadata/1.root.json" in names


def test_checked_reads_compare_with_the_given_hash(archive: Path) -> None:
    with ArchiveReader(archive) as r:
        good = hashlib.sha256(b"hello\n").hexdigest()
        assert r.read_checked("files/hello.txt", good) == b"hello\n"
        with pytest.raises(VerificationError, match=r"files/hello\.txt: changed after verification"):
            r.read_checked("files/hello.txt", "0" * 64)
        with pytest.raises(FormatError, match="more than the 4 allowed"):
            r.read("files/hello.txt", limit=4)
        with pytest.raises(FormatError, match="files/nope: not in"):
            r.read("files/nope")


def test_a_checked_copy_leaves_nothing_when_the_bytes_differ(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    with ArchiveReader(archive) as r:
        with pytest.raises(VerificationError):
            r.copy_checked("files/big.bin", "0" * 64, dest)
        assert list(dest.parent.iterdir()) == []
        data = r.read("files/big.bin")
        r.copy_checked("files/big.bin", hashlib.sha256(data).hexdigest(), dest, prefix=b"#!x\n")
    assert dest.read_bytes() == b"#!x\n" + data


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_a_truncated_file_is_a_format_error(archive: Path, cut: int) -> None:
    data = archive.read_bytes()
    archive.write_bytes(data[:-cut])
    with pytest.raises(FormatError):
        read_layout(archive)


def test_appended_bytes_are_a_format_error(archive: Path) -> None:
    with archive.open("ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(FormatError):
        read_layout(archive)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pex"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        ArchiveReader(fifo)
    with pytest.raises(UsageError, match="no such file"):
        ArchiveReader(tmp_path / "missing.pex")
    with pytest.raises(UsageError, match="not a regular file"):
        ArchiveReader(tmp_path)


def test_the_reader_closes_its_descriptor(archive: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with ArchiveReader(archive) as r:
            r.read("appliance.json")
    assert len(os.listdir("/proc/self/fd")) == before
