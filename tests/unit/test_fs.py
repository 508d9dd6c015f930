"""core.fs: bounded reads of small input files, private directories, private writes that never go
through a planted link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chiron.core.fs import WriteBehind, private_dir, private_tempdir, read_small, write_atomic, write_private
from chiron.errors import UsageError


def test_read_small_reads_a_regular_file_within_its_bound(tmp_path: Path) -> None:
    f = tmp_path / "key.pem"
    f.write_bytes(b"x" * 100)
    assert read_small(f, 100, "key") == b"x" * 100
    with pytest.raises(UsageError, match=rf"^key {f}: 100 bytes, more than the 99 such a file may have$"):
        read_small(f, 99, "key")
    link = tmp_path / "link.pem"
    link.symlink_to(f)  # a link to a regular file is that file
    assert read_small(link, 100) == b"x" * 100


def test_read_small_refuses_what_is_not_a_regular_file_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes it: opening it for a blocking read would hang for ever
    cases = {
        fifo: "is a FIFO",
        tmp_path: "is a directory",
        Path("/dev/zero"): "is a character device",
        tmp_path / "missing": "no such file",
    }
    for path, problem in cases.items():
        with pytest.raises(UsageError) as exc:
            read_small(path, 1 << 20, "--add")
        assert exc.value.message == f"--add {path}: {problem}" + (
            ", not a regular file" if problem.startswith("is ") else ""
        )


def test_read_small_names_an_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("x")
    f.chmod(0)
    if os.access(f, os.R_OK):  # root reads anything: make the path unusable another way
        f.chmod(0o600)
        f = tmp_path / "secret" / "below"  # a path through a file
    with pytest.raises(UsageError, match=rf"^{f}: cannot read: "):
        read_small(f, 10)


def test_private_dir_creates_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        made = private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert made == (tmp_path / "a" / "b").resolve()
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_private_dir_refuses_and_leaves_an_unsafe_directory(tmp_path: Path) -> None:
    for mode in (0o777, 0o775, 0o722, 0o1777):
        d = tmp_path / f"d{mode:o}"
        d.mkdir()
        d.chmod(mode)
        with pytest.raises(UsageError, match="lets others write it") as exc:
            private_dir(d, "key directory")
        assert exc.value.hint == f"check what is in it, then chmod 700 {d}; or choose a new directory"
        assert stat.S_IMODE(d.stat().st_mode) == mode
    (tmp_path / "ok").mkdir(mode=0o755)  # readable by others is fine: the keys themselves are 0600
    assert private_dir(tmp_path / "ok") == tmp_path / "ok"
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        private_dir(tmp_path / "f")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="cannot use the directory"):
        private_dir(tmp_path / "dangling")


def test_private_dir_resolves_a_link_so_that_it_cannot_be_swapped_later(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    assert private_dir(tmp_path / "link") == real


def test_private_tempdir_is_0700_and_removed_even_on_failure(tmp_path: Path) -> None:
    seen: list[Path] = []
    with pytest.raises(RuntimeError), private_tempdir("chiron-test-", tmp_path) as d:
        seen.append(d)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.parent == tmp_path
        (d / "auth.json").write_text("secret")
        raise RuntimeError("the child failed")
    assert seen and not seen[0].exists()


def test_write_private_replaces_a_link_at_the_destination_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    victim.chmod(0o644)
    dest = tmp_path / "keys" / "root.pem"
    dest.parent.mkdir()
    dest.symlink_to(victim)
    write_private(dest, b"PRIVATE")
    assert victim.read_text() == "keep me\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not dest.is_symlink() and dest.read_bytes() == b"PRIVATE"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == ["root.pem"]  # no temporary left behind


def test_write_atomic_leaves_nothing_when_the_write_fails(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "file"
    with pytest.raises(TypeError):
        write_atomic(dest, "not bytes")  # type: ignore[arg-type]
    assert list((tmp_path / "out").iterdir()) == []


def test_write_behind_advises_each_step_and_never_before_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranges handed to the kernel: each new step with the lag behind it, none before the
    offset the copy started at (bytes kept from an earlier run are not this copy's to drop)."""
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append((offset, offset + length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    monkeypatch.setattr(WriteBehind, "STEP", 4096)
    monkeypatch.setattr(WriteBehind, "LAG", 3 * 4096)
    f = tmp_path / "out"
    data = os.urandom(10 * 4096 + 100)
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        start = 1000  # a resumed copy: the bytes before it were written by an earlier run
        behind = WriteBehind(fd, start)
        pos = start
        for n in (100, 4000, 4096, 8192, 5000, 4096, 4096, 4096, 7316):
            os.pwrite(fd, data[pos - start : pos - start + n], pos)
            pos += n
            behind.wrote(pos)
        assert os.pread(fd, len(data), start) == data[: pos - start]
    finally:
        os.close(fd)
    # Once a step was written: the step and up to LAG behind it, from the start at the earliest.
    ends = [5100, 9196, 17388, 22388, 26484, 30580, 34676, 41992]
    assert calls == [(max(start, end - 3 * 4096), end) for end in ends]


def test_write_behind_costs_nothing_where_advice_is_refused() -> None:
    read, write = os.pipe()  # posix_fadvise on a pipe fails with ESPIPE
    try:
        behind = WriteBehind(write, 0)
        behind.wrote(WriteBehind.STEP)
        assert behind.mark == WriteBehind.STEP
    finally:
        os.close(read)
        os.close(write)
