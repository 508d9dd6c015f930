"""Hostile input and hostile hosts (issue 13): every command, driven through its command line only.

ONE table: each case prepares hostile input or damaged state in its own directory, runs ``chiron``
as a real program, and checks what the issue demands of every item:

- no Python traceback and no "internal error";
- the documented exit code (docs/exit-codes.md);
- the error is ONE line on stderr, ``chiron: error: MESSAGE (HINT)``, naming the problem. Commands
  whose failure is a documented report (``verify``, ``audit verify``: a header line and one
  ``  - PROBLEM`` line per finding; ``doctor``: its checks on stdout and ``not ready``) are held to
  that shape instead, one line per finding;
- nothing on disk changed: the case's whole directory (prefix, state, store, keys, the targets of
  planted symlinks, the input files, TMPDIR and the working directory) is the same before and after:
  paths, file types, modes, symlink targets, sizes and sha256. The only writes allowed are the
  host's own bookkeeping of a refusal: lines appended to the audit log (``audit.jsonl``,
  ``audit.head``) and the holder text in a lock file;
- the output carries no terminal escape (ESC), no C1 control and no bidirectional override.

The expectation of each case is what the issue asks for, not what chiron does today. Only
tests/helpers.py and tests/conftest.py are imported; the archive surgery below uses nothing but the
format described in docs/format.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import ENV_311, ENV_312, write_spec

CHIRON = [sys.executable, "-m", "chiron"]
GiB, MiB = 1 << 30, 1 << 20
TRACEBACK = "Traceback (most recent call last)"
# ESC, the C1 controls, and the bidirectional embeddings, overrides and isolates.
UNSAFE_OUTPUT = re.compile("[\x1b\x80-\x9f\u202a-\u202e\u2066-\u2069]")
# A member name that goes back up a line (ESC M, reverse index), erases it and draws a green "verified"
# on the operator's terminal. click strips CSI sequences (ESC [ ...) from output that is not a terminal,
# so through the pipes of these tests only the rest shows: ESC M, OSC (ESC ] ... BEL) and CR are what
# reveal a name printed raw. On a terminal nothing is stripped.
ESC = "\r\x1bM\x1b[2K\x1b]0;owned\x07\x1b[32m"
ESC_NAME = f"wheels/beta-1.1-py3-none-any.whl{ESC}verified: every byte accounted for\x1b[0m"
BIDI_NAME = "wheels/\u202elhw.any-none-py3-1.1-ateb"
C1_NAME = "wheels/beta-1.1\x9b2K-py3-none-any.whl"
BOOKKEEPING = {"audit.jsonl", "audit.head", "lock", ".lock"}


# ---------------------------------------------------------------- the appliance format (docs/format.md)

FOOTER = struct.Struct("<8sQQQ32s")


@dataclass(frozen=True)
class Parsed:
    data: bytes
    index: dict[str, Any]
    index_offset: int
    zip_offset: int

    @property
    def shebang(self) -> bytes:
        return self.data[: self.index["shebang_length"]]

    @property
    def tool_zip(self) -> bytes:
        return self.data[self.zip_offset :]

    def members(self) -> list[tuple[str, bytes]]:
        return [(m["name"], self.data[m["offset"] : m["offset"] + m["length"]]) for m in self.index["members"]]

    def member(self, name: str) -> bytes:
        return dict(self.members())[name]


def parse(path: Path) -> Parsed:
    """Index and regions of an appliance, with the stdlib only (the script of docs/format.md)."""
    data = path.read_bytes()
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd + 12)
    zip_offset = eocd - cd_size - cd_offset
    magic, index_offset, index_length, _zo, _sha = FOOTER.unpack_from(data, zip_offset - FOOTER.size)
    assert magic == b"CHIRONA1"
    return Parsed(data, json.loads(data[index_offset : index_offset + index_length]), index_offset, zip_offset)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def assemble(
    dest: Path,
    shebang: bytes,
    members: list[tuple[str, bytes | int]],
    tool_zip: bytes,
    *,
    tool_format: str = "pex",
    index_hook: Callable[[dict[str, Any]], None] | None = None,
    index_raw: bytes | None = None,
) -> Path:
    """Write an appliance the way an attacker who knows the format would: index and footer consistent.

    A member given as an int is a hole of that many zero bytes (a sparse file: big, yet cheap on disk).
    """
    entries = []
    with dest.open("wb") as f:
        f.write(shebang)
        for name, body in members:
            entries.append({"name": name, "offset": f.tell(), "length": body if isinstance(body, int) else len(body)})
            if isinstance(body, int):
                f.seek(body, os.SEEK_CUR)
            else:
                f.write(body)
        index = {"format": "chiron-appliance/1", "tool_format": tool_format, "shebang_length": len(shebang)}
        index["members"] = entries
        if index_hook:
            index_hook(index)
        raw = canonical(index) if index_raw is None else index_raw
        index_offset = f.tell()
        f.write(raw)
        zip_offset = index_offset + len(raw) + FOOTER.size
        f.write(FOOTER.pack(b"CHIRONA1", index_offset, len(raw), zip_offset, hashlib.sha256(raw).digest()))
        f.write(tool_zip)
    os.chmod(dest, 0o755)
    return dest


def variant(
    good: Path,
    dest: Path,
    *,
    replace: dict[str, bytes | int] | None = None,
    add: dict[str, bytes] | None = None,
    rename: dict[str, str] | None = None,
    index_hook: Callable[[dict[str, Any]], None] | None = None,
    index_raw: bytes | None = None,
    tool_zip: bytes | None = None,
) -> Path:
    """A copy of ``good`` with members replaced, added or renamed, or another index or tool zip."""
    p = parse(good)
    replace, rename = replace or {}, rename or {}
    members: list[tuple[str, bytes | int]] = [(rename.get(n, n), replace.get(n, b)) for n, b in p.members()]
    members += list((add or {}).items())
    return assemble(
        dest,
        p.shebang,
        members,
        p.tool_zip if tool_zip is None else tool_zip,
        tool_format=p.index["tool_format"],
        index_hook=index_hook,
        index_raw=index_raw,
    )


def write_zip(entries: list[tuple[str, int, int, int, bytes, int]]) -> bytes:
    """A zip from raw entries (name, method, crc, uncompressed size, compressed data, external attr)."""
    out, central = bytearray(), bytearray()
    for name, method, crc, usize, data, attr in entries:
        n = name.encode()
        central += (
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                0x0314,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(data),
                usize,
                len(n),
                0,
                0,
                0,
                0,
                attr,
                len(out),
            )
            + n
        )
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), usize, len(n), 0)
        out += n + data
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    return bytes(out)


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def zero_bomb(size: int) -> tuple[bytes, int]:
    """Raw deflate data that inflates to ``size`` zero bytes (about 1/1000 of it), and its CRC-32."""
    block = 16 * MiB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, history reset: repeatable
    n = size // block
    crc, zeros = 0, bytes(block)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    return piece * n + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


def tool_zip_with(
    good: Path, changes: dict[str, tuple[bytes, int, int] | bytes], extra_names: tuple[str, ...] = ()
) -> bytes:
    """The appliance's tool zip rewritten: ``changes`` maps a member to new content (bytes) or to raw
    (deflated data, crc, size); ``extra_names`` are added as small members."""
    entries = []
    with zipfile.ZipFile(io.BytesIO(parse(good).tool_zip)) as z:
        for info in z.infolist():
            new = changes.get(info.filename)
            if isinstance(new, tuple):
                data, crc, size = new
                entries.append((info.filename, 8, crc, size, data, info.external_attr))
                continue
            body = z.read(info) if new is None else new
            method = info.compress_type
            stored = deflate(body) if method == zipfile.ZIP_DEFLATED else body
            entries.append((info.filename, method, zlib.crc32(body), len(body), stored, info.external_attr))
    for name in extra_names:
        entries.append((name, 0, zlib.crc32(b"print('owned')\n"), 15, b"print('owned')\n", 0o100644 << 16))
    return write_zip(entries)


# ---------------------------------------------------------------- running chiron and watching the disk


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str
    err: str
    maxrss: int  # bytes
    seconds: float
    timed_out: bool

    def __str__(self) -> str:
        def cut(s: str) -> str:
            return s if len(s) < 4000 else s[:2000] + f"\n[... {len(s) - 4000} chars ...]\n" + s[-2000:]

        return (
            f"argv: {self.argv!r}\nexit: {self.code} (timed out: {self.timed_out}) after {self.seconds:.1f} s, "
            f"max RSS {self.maxrss >> 20} MiB\n--- stdout\n{cut(self.out)}\n--- stderr\n{cut(self.err)}"
        )


def run(
    argv: list[str],
    *,
    cwd: Path,
    aux: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    rlimit_as: int | None = None,
    umask: int | None = None,
) -> Result:
    """Run ``chiron ARGV``; measure the peak memory of exactly this child, kill it on timeout.

    Through a small launcher: a child forked from this (large) test process reports this process's
    resident size as its own peak (the kernel keeps the forked memory's high-water mark across exec),
    so the launcher forks chiron from its own few MiB and reports chiron's wait4 peak in a file."""
    aux.mkdir(parents=True, exist_ok=True)
    peak = aux / "maxrss"
    launch = [sys.executable, "-S", "-c", _LAUNCH, str(rlimit_as or 0), str(-1 if umask is None else umask), str(peak)]
    started = time.monotonic()
    with (aux / "stdout").open("wb") as o, (aux / "stderr").open("wb") as e:
        proc = subprocess.Popen(
            [*launch, *CHIRON, *argv],
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Result(
        argv,
        proc.returncode,
        (aux / "stdout").read_bytes().decode(errors="replace"),
        (aux / "stderr").read_bytes().decode(errors="replace"),
        (int(peak.read_text()) if peak.exists() else usage.ru_maxrss) * 1024,
        time.monotonic() - started,
        timed_out,
    )


_LAUNCH = """
import os, resource, signal, sys
limit, mask, peak = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if mask >= 0:
    os.umask(mask)
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[4], sys.argv[4:])
_, status, usage = os.wait4(pid, 0)
with open(peak, "w") as f:
    f.write(str(usage.ru_maxrss))
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
"""


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (symlinks not followed): type, mode, and target, or size and sha256."""
    out: dict[str, tuple[Any, ...]] = {}

    def visit(p: Path) -> None:
        rel = str(p.relative_to(root))
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", mode, os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode)
            for child in sorted(p.iterdir()):
                visit(child)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with p.open("rb") as f:
                while chunk := f.read(4 * MiB):
                    h.update(chunk)
            content = p.read_bytes() if p.name == "audit.jsonl" else None
            out[rel] = ("file", mode, st.st_size, h.hexdigest(), content)
        else:
            out[rel] = ("fifo" if stat.S_ISFIFO(st.st_mode) else "special", mode)

    visit(root)
    return out


def changes(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]], mutable: list[str]) -> list[str]:
    """What changed, less the host's bookkeeping of a refusal and the paths a case may change."""

    def under(path: str, roots: list[str]) -> bool:
        return any(path == r or path.startswith(r + "/") for r in roots)

    def shown(entry: tuple[Any, ...] | None) -> str:
        return "absent" if entry is None else repr(entry[:4])

    gone: list[str] = []
    made: list[str] = []
    new_dirs: list[str] = []
    for path in sorted(set(before) | set(after)):
        b, a = before.get(path), after.get(path)
        if b == a or under(path, mutable):
            continue
        name = path.rsplit("/", 1)[-1]
        bookkeeping = a is not None and a[0] == "file" and (b is None or b[0] == "file") and name in BOOKKEEPING
        if bookkeeping and (name != "audit.jsonl" or b is None or a[4].startswith(b[4])):
            continue  # a refusal recorded: lines appended to the audit log, the lock's holder text
        if b is None and a is not None and a[0] == "dir":
            new_dirs.append(path)
            continue
        (made if b is None else gone).append(f"{path}: {shown(b)} -> {shown(a)}")
    # A directory made only to hold the bookkeeping above (a first install's state dir) is allowed.
    found = gone + made
    for d in new_dirs:
        if any(f.startswith(d + "/") for f in found) or not any(
            q.startswith(d + "/") and q.rsplit("/", 1)[-1] in BOOKKEEPING for q in after
        ):
            found.append(f"{d}: created")
    return found


# ---------------------------------------------------------------- cases


@dataclass
class Ctx:
    """What a case's setup works with. ``tmp`` is watched (nothing in it may change); ``aux`` is not."""

    tmp: Path
    aux: Path
    request: pytest.FixtureRequest
    env: dict[str, str]
    mutable: list[str] = field(default_factory=list)  # paths under tmp that a succeeding case may change
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @property
    def app(self) -> Path:
        """The session's good appliance (read-only: never pass it to a command that may write)."""
        return self.fixture("appliance")

    @property
    def keys(self) -> Path:
        return self.fixture("keys")

    @property
    def root(self) -> str:
        return str(self.keys / "1.root.json")

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write(self, name: str, data: bytes | str, mode: int | None = None) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(p, mode)
        return p

    def prefix(self, name: str = "p") -> Path:
        """A copy of the module's installed host (symlinks, modes and all)."""
        dest = self.tmp / name
        subprocess.run(["cp", "-a", str(self.fixture("installed")), str(dest)], check=True)
        return dest

    def rid(self, prefix: Path) -> str:
        return os.readlink(prefix / "current").removeprefix("releases/")

    def victim(self, name: str = "victim") -> Path:
        """A directory outside the host that an operation must never touch."""
        d = self.tmp / name
        (d / "precious").mkdir(parents=True)
        (d / "precious" / "data.txt").write_text("not chiron's to delete\n")
        (d / "notes.txt").write_text("keep me\n")
        return d

    def bad(self, name: str = "bad.pex", **kw: Any) -> Path:
        return variant(self.app, self.tmp / name, **kw)

    def mkdir(self, name: str) -> Path:
        (self.tmp / name).mkdir(parents=True)
        return self.tmp / name

    def copy(self, src: Path, name: str) -> Path:
        shutil.copyfile(src, self.tmp / name)
        return self.tmp / name

    def build_args(self, spec: Path) -> list[str]:
        """``build SPEC`` into an (empty, watched) out/, with the session's tool wheels and cache."""
        out = self.mkdir("out")
        return [
            "build",
            str(spec),
            "-o",
            str(out / "app.pex"),
            "--tool-wheels",
            str(self.fixture("tool_wheels")),
            "--cache-dir",
            str(self.fixture("session_cache")),
        ]

    def fifo(self, name: str) -> Path:
        p = self.tmp / name
        os.mkfifo(p)
        return p

    def state(self, prefix: Path) -> dict[str, Any]:
        return json.loads((prefix / "state" / "state.json").read_text())

    def tmpfs(self, name: str, size: str) -> Path:
        mnt = self.tmp / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip()})")
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))
        return mnt


@dataclass(frozen=True)
class Case:
    id: str
    item: int | None  # the item of issue 13 (None: another case in its spirit)
    setup: Callable[[Ctx], list[str]]  # prepares the case under ctx.tmp; returns the argv after "chiron"
    exit: int
    expect: tuple[str, ...]  # regexes (case-insensitive) that the error line must all match
    shape: str = "error"  # error | report (verify, audit verify) | doctor | ok (exit 0, output matched)
    timeout: float = 180
    rlimit_as: int | None = 4 * GiB  # a runaway child fails, and does not take the machine with it
    max_rss: int | None = None
    umask: int | None = None
    check: Callable[[Ctx, Result], None] | None = None


# --- item 1: a zip bomb in the tool zip


def zip_bomb_verify(c: Ctx) -> list[str]:
    return ["verify", str(c.copy(c.fixture("bomb_pex"), "bomb.pex")), "--root", c.root]


def zip_bomb_install(c: Ctx) -> list[str]:
    return ["install", str(c.copy(c.fixture("bomb_pex"), "bomb.pex")), "--prefix", str(c.path("p")), "--root", c.root]


# --- item 2: names with terminal escapes, bidi overrides and C1 controls


def renamed(c: Ctx, new: str) -> Path:
    """The good appliance with one payload member renamed in the index (index and footer consistent)."""
    return c.bad(rename={"wheels/beta-1.1-py3-none-any.whl": new})


def esc_tool_member(c: Ctx) -> list[str]:
    bad = c.bad(tool_zip=tool_zip_with(c.app, {}, extra_names=(f"evil{ESC}verified.py",)))
    return ["verify", str(bad), "--root", c.root]


def esc_manifest_name(c: Ctx) -> list[str]:
    """inspect shows the (unverified) appliance name: it must not reach the terminal raw."""
    manifest = json.loads(parse(c.app).member("appliance.json"))
    manifest["name"] = f"demo{ESC}verified \u202egnissim\u202c"
    return ["inspect", str(c.bad(replace={"appliance.json": canonical(manifest)}))]


def esc_file_name(c: Ctx) -> list[str]:
    """A file name on the operator's removable media is attacker-chosen too."""
    dest = c.tmp / f"app{ESC}OK\u202e.pex"
    os.link(c.app, dest)
    return ["verify", str(dest), "--root", c.root]


# --- item 3: PREFIX/releases or state/staging a symlink to somewhere else


def releases_symlink(c: Ctx) -> Path:
    """releases/ -> a directory outside that also holds the live release: the host still works through
    it, and everything else in that directory is someone else's."""
    p, victim = c.prefix(), c.victim()
    rid = c.rid(p)
    (p / "releases" / rid).rename(victim / rid)
    (p / "releases").rmdir()
    (p / "releases").symlink_to(victim)
    return p


def staging_symlink(c: Ctx, prefix: Path) -> Path:
    victim = c.victim()
    staging = prefix / "state" / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging.symlink_to(victim)
    return prefix


def staging_symlink_install(c: Ctx) -> list[str]:
    """A fresh host whose (pre-made) state/staging is a symlink."""
    p = staging_symlink(c, c.path("p"))
    return ["install", str(c.app), "--prefix", str(p), "--root", c.root]


# --- item 4: modes, umask, release ids in txn.json


def state_dir_0777_install(c: Ctx) -> list[str]:
    c.path("s").mkdir()
    os.chmod(c.path("s"), 0o777)
    return ["install", str(c.app), "--prefix", str(c.path("p")), "--state-dir", str(c.path("s")), "--root", c.root]


def umask_000_install(c: Ctx) -> list[str]:
    c.mutable += ["p", "tmp"]  # the install itself may write here; _umask_check looks at the result
    return ["install", str(c.app), "--prefix", str(c.path("p")), "--root", c.root]


def umask_check(c: Ctx, r: Result) -> None:
    p = c.path("p")
    rid = c.rid(p)
    paths = [p, p / "bin", p / "releases", p / "releases" / rid, p / "releases" / rid / "bin", p / "state"]
    paths.append(p / "releases" / rid / "bin" / "chiron")
    loose = [
        f"{q.relative_to(c.tmp)} {stat.S_IMODE(q.lstat().st_mode):04o}"
        for q in paths
        if q.exists() and stat.S_IMODE(q.lstat().st_mode) & 0o022
    ]
    assert not loose, f"group- or world-writable after an install under umask 000: {', '.join(loose)}"


def txn(c: Ctx, p: Path, **fields: Any) -> Path:
    """Write PREFIX/state/txn.json as an interrupted upgrade would have, with ``fields`` changed."""
    st = c.state(p)
    record = {
        "op": "upgrade",
        "id": "demo-9.9.9-1",
        "release": st["releases"][st["current"]],
        "reference_time": "2020-01-01T00:00:00Z",
        "keep_releases": 2,
        **fields,
    }
    (p / "state" / "txn.json").write_text(json.dumps(record))
    return p


def txn_absolute_id(c: Ctx) -> list[str]:
    return ["recover", "--prefix", str(txn(c, c.prefix(), id=str(c.victim() / "precious")))]


def txn_dotdot_id(c: Ctx) -> list[str]:
    c.victim()
    return ["recover", "--prefix", str(txn(c, c.prefix(), id="../../victim/precious"))]


# --- item 5: registry credentials on skopeo's command line

SECRET = "operator:hunter2-registry-secret"


def skopeo_credentials(c: Ctx) -> list[str]:
    """A build of a spec with a private registry image; a fake skopeo records its argv and fails."""
    fake = c.aux / "fakebin"
    fake.mkdir(parents=True)
    log = c.aux / "skopeo-argv.log"
    (fake / "skopeo").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\necho "fake skopeo: registry unreachable" >&2\nexit 1\n'
    )
    os.chmod(fake / "skopeo", 0o755)
    c.env["PATH"] = f"{fake}:{c.env['PATH']}"
    c.env["REGISTRY_CREDS"] = SECRET
    spec = write_spec(
        c.path("spec"),
        keys=c.keys,
        index_url=c.fixture("index").url,
        requirements=["alpha==1.0", "gamma==2.0"],
        environments=ENV_311 + ENV_312,
        extra='[[images]]\nref = "registry.example:5000/team/app:1.0"\ncredentials_env = "REGISTRY_CREDS"\n',
    )
    return c.build_args(spec)


def skopeo_check(c: Ctx, r: Result) -> None:
    log = c.aux / "skopeo-argv.log"
    assert log.is_file(), "the build never ran skopeo: the case did not reach the image fetch"
    assert SECRET not in log.read_text(), f"registry credentials on skopeo's command line: {log.read_text()!r}"


# --- item 6: keys init


def keys_init_0777(c: Ctx) -> list[str]:
    c.path("k").mkdir()
    os.chmod(c.path("k"), 0o777)
    return ["keys", "init", str(c.path("k"))]


def keys_init_planted_symlink(c: Ctx) -> list[str]:
    """The fixed temporary name, planted as a symlink to a file of someone else's."""
    c.write("victim.txt", "precious\n")
    c.path("k").mkdir(mode=0o700)
    (c.path("k") / ".root.pem.tmp").symlink_to(c.path("victim.txt"))
    c.mutable.append("k")
    return ["keys", "init", str(c.path("k"))]


def keys_init_planted_tempfile(c: Ctx) -> list[str]:
    """The fixed temporary name, planted as a world-readable file."""
    c.path("k").mkdir(mode=0o700)
    c.write("k/.root.pem.tmp", "", mode=0o644)
    c.mutable.append("k")
    return ["keys", "init", str(c.path("k"))]


def keys_init_check(c: Ctx, r: Result) -> None:
    bad = []
    for role in ("root", "targets", "snapshot", "timestamp"):
        st = (c.path("k") / f"{role}.pem").lstat()
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
            kind = "a regular file" if stat.S_ISREG(st.st_mode) else "NOT a regular file"
            bad.append(f"k/{role}.pem is {kind}, mode {stat.S_IMODE(st.st_mode):04o}")
    assert not bad, "private keys not 0600 regular files: " + "; ".join(bad)


# --- item 8: crafted archives, damaged state files, bad option values


def superscript_root(c: Ctx) -> Path:
    return c.bad(add={"metadata/².root.json": parse(c.app).member("metadata/1.root.json")})


def deep_index(c: Ctx) -> Path:
    return c.bad(index_raw=b"[" * 100_000 + b"]" * 100_000)


def overlap(c: Ctx) -> Path:
    def hook(index: dict[str, Any]) -> None:
        index["members"][2]["offset"] -= 4  # lock/pylock.toml starts inside the spec
        index["members"][2]["length"] += 4

    return c.bad(index_hook=hook)


def manifest_list(c: Ctx) -> Path:
    return c.bad(replace={"appliance.json": b"[]"})


def delta(c: Ctx, header: bytes, name: str = "new.delta") -> Path:
    return c.write(name, b"CHIRONDL" + struct.pack("<Q", len(header)) + header)


def upgrade(c: Ctx, archive: Path | str, prefix: Path) -> list[str]:
    return ["upgrade", str(archive), "--prefix", str(prefix)]


def state_edit(c: Ctx, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """An installed host whose state.json is ``edit(state)`` (or the state edited in place)."""
    p = c.prefix()
    data = c.state(p)
    new = edit(data)
    (p / "state" / "state.json").write_text(json.dumps(data if new is None else new))
    return p


def host_with(c: Ctx, edit: Callable[[Path], Any]) -> Path:
    """An installed host, then ``edit(prefix)``."""
    p = c.prefix()
    edit(p)
    return p


def store(c: Ctx, state: Any) -> Path:
    s = c.path("store")
    (s / "appliances").mkdir(parents=True)
    (s / "state.json").write_text(json.dumps(state))
    return s


STORE_NO_NAME = {
    "format": "chiron-mirror/1",
    "spec": "appliance.toml",
    "keys": {},
    "versions": [{"metadata_version": 1, "file": "appliances/demo-1.pex", "version": "1.0.0"}],
}


def new_root(c: Ctx, *extra: str) -> list[str]:
    d = c.path("ceremony")
    d.mkdir()
    keys = [f"--key={role}={c.keys / f'{role}.pem'}" for role in ("root", "targets", "snapshot", "timestamp")]
    return ["keys", "new-root", str(d), *keys, *extra]


def rotate(c: Ctx, *extra: str) -> list[str]:
    rootdir = c.path("rootdir")
    rootdir.mkdir()
    shutil.copyfile(c.keys / "1.root.json", rootdir / "1.root.json")
    return ["keys", "rotate", "targets", "--root-dir", str(rootdir), *extra]


# --- item 10: a huge member count


def million_members(c: Ctx) -> Path:
    """A million empty members after the real ones: they tile (length 0), the index stays < 64 MiB."""
    p = parse(c.app)
    empty: list[tuple[str, bytes | int]] = [(f"m/{i}", b"") for i in range(1_000_000)]
    return assemble(c.path("many.pex"), p.shebang, [*p.members(), *empty], p.tool_zip)


# --- item 11: a full disk


def enospc_keys_init(c: Ctx) -> list[str]:
    mnt = c.tmpfs("full", "64k")
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", "bs=4k"], capture_output=True, check=False)
    return ["keys", "init", str(mnt / "keys")]


# --- item 13: metadata that would already be expired


OLD_EPOCH = int(time.time()) - 30 * 86400


def expired_at_build(c: Ctx) -> list[str]:
    c.env["SOURCE_DATE_EPOCH"] = str(OLD_EPOCH)
    return c.build_args(c.fixture("good_spec"))


def expired_expect() -> tuple[str, ...]:
    built = datetime.fromtimestamp(OLD_EPOCH, UTC)
    # The spec's timestamp role lives 1 day: name the role, its expiry and the build time.
    return ("timestamp", "expire", (built + timedelta(days=1)).strftime("%Y-%m-%d"), built.strftime("%Y-%m-%d"))


# --- more damaged state


def current_outside(p: Path) -> None:
    outside = p.parent / "elsewhere"
    shutil.copytree(p / os.readlink(p / "current"), outside, symlinks=True)
    (p / "current").unlink()
    (p / "current").symlink_to(outside)


def lock_is_dir(p: Path) -> None:
    (p / "state" / "lock").unlink()
    (p / "state" / "lock").mkdir()


def metadata_symlink(c: Ctx) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        shutil.move(p / "state" / "metadata" / "root.json", c.path("elsewhere.json"))
        (p / "state" / "metadata" / "root.json").symlink_to(c.path("elsewhere.json"))

    return edit


def append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line)


# --- volumes (issue 18): what crosses on media is hostile input too


def volumes(c: Ctx, name: str = "vols") -> list[Path]:
    """The good appliance split into volumes (two: the tool zip is one signed unit, alone in one)."""
    size = str(c.app.stat().st_size - 1000)
    subprocess.run([*CHIRON, "split", str(c.app), "--size", size, "-o", str(c.path(name))], check=True, env=c.env,
                   capture_output=True)  # fmt: skip
    return sorted(c.path(name).glob("*.chv"))


def volume_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """A volume's header (docs/format.md#volumes) and the bytes after it."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data, 8)
    return json.loads(data[16 : 16 + length]), data[16 + length :]


def forged_volume(c: Ctx, **fields: Any) -> Path:
    header, rest = volume_header(volumes(c)[0])
    raw = json.dumps({**header, **fields}, sort_keys=True, separators=(",", ":")).encode()
    return c.write("forged.chv", b"CHIRONVL" + struct.pack("<Q", len(raw)) + raw + rest)


def truncated_volume_receive(c: Ctx) -> list[str]:
    vol = volumes(c)[0]
    vol.write_bytes(vol.read_bytes()[:-1000])
    return ["receive", str(vol), "--to", str(c.path("in")), "--root", c.root]


def missing_volume_join(c: Ctx) -> list[str]:
    volumes(c)[1].unlink()
    return ["join", str(c.path("vols")), "-o", str(c.path("joined.pex")), "--root", c.root]


def differing_copies_join(c: Ctx) -> list[str]:
    vols = volumes(c)
    other = c.mkdir("other")
    data = bytearray(vols[0].read_bytes())
    data[-10] ^= 1
    (other / vols[0].name).write_bytes(bytes(data))
    return ["join", str(c.path("vols")), str(other), "-o", str(c.path("joined.pex")), "--root", c.root]


# The table. exit: the documented code (docs/exit-codes.md, or the issue where it says); expect: regexes
# the one-line error (or a listed problem, or a FAIL check) must all match. A fresh prefix is c.path("p");
# an installed one is c.prefix() (a copy of the module's installed host).
# fmt: off
CASES: list[Case] = [
    # 1. a zip bomb in the tool zip: decompression is bounded while verify diagnoses the changed zip
    Case("zip-bomb-verify", 1, zip_bomb_verify, 1, (r"tool zip|_archive/tool\.zip",), shape="report",
         max_rss=256 * MiB),
    Case("zip-bomb-install", 1, zip_bomb_install, 1, (r"tool zip|_archive/tool\.zip",), max_rss=256 * MiB),
    # 2. escapes, bidi overrides and C1 controls are never printed raw; names holding them are refused
    Case("esc-member-verify", 2, lambda c: ["verify", str(renamed(c, ESC_NAME)), "--root", c.root], 1, (r"name",),
         shape="report"),
    Case("esc-member-inspect", 2, lambda c: ["inspect", str(renamed(c, ESC_NAME))], 1, (r"name",)),
    Case("esc-member-doctor", 2, lambda c: ["doctor", str(renamed(c, ESC_NAME))], 3, (r"name",), shape="doctor"),
    # diff of an archive that cannot be read as an appliance: VerificationError, exit 1, like inspect
    Case("esc-member-diff", 2, lambda c: ["diff", str(c.app), str(renamed(c, ESC_NAME))], 1, (r"name",)),
    Case("bidi-member-verify", 2, lambda c: ["verify", str(renamed(c, BIDI_NAME)), "--root", c.root], 1, (r"name",),
         shape="report"),
    Case("c1-member-verify", 2, lambda c: ["verify", str(renamed(c, C1_NAME)), "--root", c.root], 1, (r"name",),
         shape="report"),
    Case("esc-tool-zip-member-verify", 2, esc_tool_member, 1, (r"tool zip member",), shape="report"),
    Case("esc-manifest-name-inspect", 2, esc_manifest_name, 0, (r"demo",), shape="ok"),
    Case("esc-in-file-name-verify", 2, esc_file_name, 0, (r"verified",), shape="ok"),
    # 3. a symlinked releases/ or staging/ is refused, never followed when deleting
    Case("releases-symlink-upgrade", 3, lambda c: upgrade(c, c.app, releases_symlink(c)), 4, (r"releases",)),
    Case("releases-symlink-rollback", 3, lambda c: ["rollback", "--prefix", str(releases_symlink(c))], 4,
         (r"releases",)),
    Case("releases-symlink-recover", 3, lambda c: ["recover", "--prefix", str(releases_symlink(c))], 4,
         (r"releases",)),
    Case("staging-symlink-upgrade", 3, lambda c: upgrade(c, c.app, staging_symlink(c, c.prefix())), 4,
         (r"staging",)),
    Case("staging-symlink-recover", 3, lambda c: ["recover", "--prefix", str(staging_symlink(c, c.prefix()))], 4,
         (r"staging",)),
    Case("staging-symlink-install", 3, staging_symlink_install, 4, (r"staging",)),
    # 4. the prefix and state dir are refused when group- or world-writable; umask 000; release ids checked
    Case("state-dir-0777-upgrade", 4, lambda c: upgrade(c, c.app, host_with(c, lambda p: os.chmod(p / "state", 0o777))),
         4, (r"p/state", r"writable|mode|0?777|permission")),
    Case("prefix-0777-upgrade", 4, lambda c: upgrade(c, c.app, host_with(c, lambda p: os.chmod(p, 0o777))), 4,
         (r"/p\b", r"writable|mode|0?777|permission")),
    Case("state-dir-0777-install", 4, state_dir_0777_install, 4, (r"/s\b", r"writable|mode|0?777|permission")),
    Case("umask-000-install", 4, umask_000_install, 0, (r"installed",), shape="ok", umask=0, check=umask_check),
    Case("txn-absolute-id-recover", 4, txn_absolute_id, 4, (r"txn\.json", r"id|release")),
    Case("txn-dotdot-id-recover", 4, txn_dotdot_id, 4, (r"txn\.json", r"id|release")),
    # 5. registry credentials reach skopeo through an auth file, never its command line (ps)
    Case("skopeo-credentials-build", 5, skopeo_credentials, 3, (r"skopeo|registry\.example",), check=skopeo_check),
    # 6. keys init: no 0777 key directory; a planted temporary file or symlink is never used
    Case("keys-init-0777-dir", 6, keys_init_0777, 2, (r"/k\b", r"writable|mode|0?777|permission")),
    Case("keys-init-planted-symlink", 6, keys_init_planted_symlink, 0, (r"fingerprint|root",), shape="ok",
         check=keys_init_check),
    Case("keys-init-planted-tempfile", 6, keys_init_planted_tempfile, 0, (r"fingerprint|root",), shape="ok",
         check=keys_init_check),
    # 7. trust on first use only when asked for; verify says plainly when nothing anchored it
    Case("install-without-anchor", 7, lambda c: ["install", str(c.app), "--prefix", str(c.path("p"))], 2,
         (r"--trust-on-first-use",)),
    Case("verify-without-anchor", 7, lambda c: ["verify", str(c.app)], 0,
         (r"\b(not|nothing|un)[ -]?anchored|no (trust )?anchor",), shape="ok"),
    # 8. crafted archives, damaged state, bad option values: no traceback, no internal error
    Case("root-superscript-name-verify", 8, lambda c: ["verify", str(superscript_root(c)), "--root", c.root], 1,
         (r"metadata/(²|\\xb2|\\u00b2)\.root\.json",), shape="report"),
    Case("root-superscript-name-inspect", 8, lambda c: ["inspect", str(superscript_root(c))], 1,
         (r"metadata/(²|\\xb2|\\u00b2)\.root\.json",)),
    Case("deep-index-verify", 8, lambda c: ["verify", str(deep_index(c)), "--root", c.root], 1, (r"index",),
         shape="report"),
    Case("deep-index-inspect", 8, lambda c: ["inspect", str(deep_index(c))], 1, (r"index",)),
    Case("deep-index-doctor", 8, lambda c: ["doctor", str(deep_index(c))], 3, (r"index",), shape="doctor"),
    Case("deep-delta-header-upgrade", 8, lambda c: upgrade(c, delta(c, b"[" * 100_000 + b"]" * 100_000), c.prefix()),
         1, (r"new\.delta", r"header")),
    Case("appliance-json-list-verify", 8, lambda c: ["verify", str(manifest_list(c)), "--root", c.root], 1,
         (r"appliance\.json",), shape="report"),
    Case("appliance-json-list-inspect", 8, lambda c: ["inspect", str(manifest_list(c))], 1, (r"appliance\.json",)),
    Case("appliance-json-list-doctor", 8, lambda c: ["doctor", str(manifest_list(c))], 3, (r"appliance\.json",),
         shape="doctor"),
    Case("appliance-json-list-diff", 8, lambda c: ["diff", str(c.app), str(manifest_list(c))], 1,
         (r"appliance\.json",)),
    Case("overlapping-members-doctor", 8, lambda c: ["doctor", str(overlap(c))], 3, (r"overlap|lock/pylock\.toml",),
         shape="doctor"),
    Case("overlapping-members-diff", 8, lambda c: ["diff", str(c.app), str(overlap(c))], 1,
         (r"overlap|lock/pylock\.toml",)),
    Case("host-state-list-upgrade", 8, lambda c: upgrade(c, c.app, state_edit(c, lambda s: [])), 4, (r"state\.json",)),
    Case("host-state-list-status", 8, lambda c: ["status", "--prefix", str(state_edit(c, lambda s: []))], 4,
         (r"state\.json",)),
    Case("host-state-list-rollback", 8, lambda c: ["rollback", "--prefix", str(state_edit(c, lambda s: []))], 4,
         (r"state\.json",)),
    Case("host-state-list-doctor", 8, lambda c: ["doctor", "--prefix", str(state_edit(c, lambda s: []))], 3,
         (r"state\.json",), shape="doctor"),
    Case("txn-empty-object-recover", 8,
         lambda c: ["recover", "--prefix", str(host_with(c, lambda p: (p / "state" / "txn.json").write_text("{}")))],
         4, (r"txn\.json",)),
    Case("txn-empty-object-upgrade", 8,
         lambda c: upgrade(c, c.app, host_with(c, lambda p: (p / "state" / "txn.json").write_text("{}"))), 4,
         (r"txn\.json",)),
    Case("mirror-state-without-name", 8, lambda c: ["mirror", "status", "--store", str(store(c, STORE_NO_NAME))], 4,
         (r"state\.json", r"name")),
    Case("new-root-threshold-abc", 8, lambda c: new_root(c, "--threshold", "root=abc"), 2, (r"--threshold", r"abc")),
    Case("new-root-expires-5x", 8, lambda c: new_root(c, "--expires", "5x"), 2, (r"--expires", r"5x")),
    Case("rotate-expires-never", 8, lambda c: rotate(c, "--add", str(c.keys / "timestamp.pem"), "--expires", "never"),
         2, (r"--expires", r"never")),
    Case("rotate-add-bad-json", 8, lambda c: rotate(c, "--add", str(c.write("bad.json", '{"keytype": "ed25519"}'))),
         2, (r"bad\.json",)),
    # 9. a FIFO where an appliance (or root) is meant: no hang, no lock held, exit 2 naming it
    Case("fifo-upgrade", 9, lambda c: upgrade(c, c.fifo("in.pex"), c.prefix()), 2,
         (r"in\.pex", r"not a regular file"), timeout=20),
    Case("fifo-doctor", 9, lambda c: ["doctor", str(c.fifo("in.pex")), "--prefix", str(c.prefix())], 2,
         (r"in\.pex", r"not a regular file"), timeout=20),
    Case("fifo-install", 9,
         lambda c: ["install", str(c.fifo("in.pex")), "--prefix", str(c.path("p")), "--root", c.root], 2,
         (r"in\.pex", r"not a regular file"), timeout=20),
    Case("fifo-inspect", 9, lambda c: ["inspect", str(c.fifo("in.pex"))], 2, (r"in\.pex", r"not a regular file"),
         timeout=20),
    Case("fifo-root-verify", 9, lambda c: ["verify", str(c.app), "--root", str(c.fifo("root.json"))], 2,
         (r"root\.json", r"not a regular file"), timeout=20),
    Case("fifo-delta-base", 9, lambda c: ["delta", str(c.fifo("base.pex")), str(c.app), "-o", str(c.path("x.delta"))],
         2, (r"base\.pex", r"not a regular file"), timeout=20),
    # 10. bounded reads: /dev/zero as a root; an index with a million members
    Case("root-dev-zero-verify", 10, lambda c: ["verify", str(c.app), "--root", "/dev/zero"], 2, (r"/dev/zero",),
         rlimit_as=1 * GiB, max_rss=256 * MiB, timeout=60),
    Case("index-million-members-verify", 10, lambda c: ["verify", str(million_members(c)), "--root", c.root], 1,
         (r"index|members", r"too many|at most|limit|count|bound"), shape="report"),
    # 11. a missing input file exits 2 naming it; a full disk names the file
    Case("missing-archive-inspect", 11, lambda c: ["inspect", str(c.path("nope.pex"))], 2, (r"nope\.pex",)),
    Case("missing-archive-install", 11,
         lambda c: ["install", str(c.path("nope.pex")), "--prefix", str(c.path("p")), "--root", c.root], 2,
         (r"nope\.pex",)),
    Case("missing-archive-upgrade", 11, lambda c: upgrade(c, c.path("nope.pex"), c.prefix()), 2, (r"nope\.pex",)),
    Case("missing-archive-doctor", 11, lambda c: ["doctor", str(c.path("nope.pex"))], 2, (r"nope\.pex",)),
    Case("missing-archive-diff", 11, lambda c: ["diff", str(c.app), str(c.path("nope.pex"))], 2, (r"nope\.pex",)),
    Case("missing-archive-rebuild", 11, lambda c: ["rebuild", str(c.path("nope.pex")), "-o", str(c.path("r.pex"))],
         2, (r"nope\.pex",)),
    Case("missing-delta-base", 11, lambda c: ["delta", str(c.path("nope.pex")), str(c.app), "-o", str(c.path("x.delta"))],
         2, (r"nope\.pex",)),
    Case("missing-delta-new", 11, lambda c: ["delta", str(c.app), str(c.path("nope.pex")), "-o", str(c.path("x.delta"))],
         2, (r"nope\.pex",)),
    Case("missing-root-verify", 11, lambda c: ["verify", str(c.app), "--root", str(c.path("nope.json"))], 2,
         (r"nope\.json",)),
    Case("missing-spec-build", 11, lambda c: ["build", str(c.path("nope.toml")), "-o", str(c.path("o.pex"))], 2,
         (r"nope\.toml",)),
    Case("missing-spec-lock", 11, lambda c: ["lock", str(c.path("nope.toml")), "-o", str(c.path("pylock.toml"))], 2,
         (r"nope\.toml",)),
    Case("missing-keys-status", 11, lambda c: ["keys", "status", str(c.path("nope.root.json"))], 2,
         (r"nope\.root\.json",)),
    Case("missing-sign", 11, lambda c: ["sign", str(c.path("1.root.json")), "--key", f"file2:{c.keys / 'root.pem'}"],
         2, (r"1\.root\.json",)),
    Case("missing-new-root-key", 11, lambda c: new_root(c, "--key", f"root={c.path('nope.pub')}"), 2, (r"nope\.pub",)),
    Case("missing-rotate-add", 11, lambda c: rotate(c, "--add", str(c.path("nope.pub"))), 2, (r"nope\.pub",)),
    Case("missing-mirror-restore", 11,
         lambda c: ["mirror", "restore", str(c.path("nope.pex")), "--store", str(c.path("store")), "--root", c.root],
         2, (r"nope\.pex",)),
    Case("enospc-keys-init", 11, enospc_keys_init, 3, (r"full/keys",)),
    # 13. metadata that would be expired already is refused at build, naming role, expiry and build time
    Case("expired-at-build", 13, expired_at_build, 2, expired_expect()),
    # 14. the format's own region names are reserved: a payload member cannot hide behind them
    Case("reserved-shebang-name-verify", 14,
         lambda c: ["verify", str(c.bad(add={"_archive/shebang": b"#!/bin/sh\necho unsigned\n"})), "--root", c.root],
         1, (r"_archive/shebang",), shape="report"),
    Case("reserved-tool-zip-name-verify", 14,
         lambda c: ["verify", str(c.bad(add={"_archive/tool.zip": b"unsigned bytes"})), "--root", c.root], 1,
         (r"_archive/tool\.zip",), shape="report"),
    Case("reserved-shebang-name-install", 14,
         lambda c: ["install", str(c.bad(add={"_archive/shebang": b"#!/bin/sh\necho unsigned\n"})),
                    "--prefix", str(c.path("p")), "--root", c.root],
         1, (r"_archive/shebang",)),
    # 15. a metadata member is bounded by its role's limit before it is read (768 MiB, sparse on disk)
    Case("oversized-metadata-verify", 15,
         lambda c: ["verify", str(c.bad(replace={"metadata/timestamp.json": 768 * MiB})), "--root", c.root], 1,
         (r"metadata/timestamp\.json",), shape="report", max_rss=256 * MiB),
    # More that an attacker or a damaged host would try.
    Case("state-release-record-not-an-object", None,
         lambda c: upgrade(c, c.app, state_edit(c, lambda s: s["releases"].update({s["current"]: "x"}))), 4,
         (r"state\.json",)),
    Case("state-current-not-a-release", None,
         lambda c: upgrade(c, c.app, state_edit(c, lambda s: s.update(current="ghost-1.0-1"))), 4,
         (r"state\.json|ghost",)),
    Case("state-releases-a-list-status", None,
         lambda c: ["status", "--prefix", str(state_edit(c, lambda s: s.update(releases=[1, 2])))], 4,
         (r"state\.json",)),
    Case("state-json-not-json", None,
         lambda c: upgrade(c, c.app, host_with(c, lambda p: (p / "state" / "state.json").write_text("{"))), 4,
         (r"state\.json",)),
    Case("floor-json-a-list", None,
         lambda c: upgrade(c, c.app, host_with(c, lambda p: (p / "state" / "floor.json").write_text("[]"))), 4,
         (r"floor\.json",)),
    Case("txn-unknown-op-recover", None, lambda c: ["recover", "--prefix", str(txn(c, c.prefix(), op="explode"))], 4,
         (r"txn\.json", r"explode|op")),
    Case("txn-id-not-a-string-recover", None, lambda c: ["recover", "--prefix", str(txn(c, c.prefix(), id=5))], 4,
         (r"txn\.json",)),
    Case("audit-line-not-json", None,
         lambda c: ["audit", "verify", "--prefix",
                    str(host_with(c, lambda p: append_line(p / "state" / "audit.jsonl", "not json\n")))],
         1, (r"line|audit",), shape="report"),
    Case("state-lock-a-directory", None, lambda c: upgrade(c, c.app, host_with(c, lock_is_dir)), 4, (r"state/lock",)),
    Case("current-points-outside-releases", None, lambda c: upgrade(c, c.app, host_with(c, current_outside)), 4,
         (r"current",)),
    Case("trusted-metadata-a-symlink", None, lambda c: upgrade(c, c.app, host_with(c, metadata_symlink(c))), 4,
         (r"root\.json",)),
    Case("mirror-state-a-list", None, lambda c: ["mirror", "status", "--store", str(store(c, []))], 4,
         (r"state\.json",)),
    Case("mirror-state-versions-wrong-type", None,
         lambda c: ["mirror", "status", "--store", str(store(c, {**STORE_NO_NAME, "name": "demo", "versions": [1]}))],
         4, (r"state\.json",)),
    Case("store-is-a-file", None, lambda c: ["mirror", "status", "--store", str(c.write("store", "not a directory"))],
         2, (r"store",)),
    Case("spec-is-a-directory-build", None,
         lambda c: ["build", str(c.mkdir("spec.toml")), "-o", str(c.path("o.pex"))], 2, (r"spec\.toml",)),
    Case("spec-with-nul-byte-lock", None,
         lambda c: ["lock", str(c.write("spec.toml", b'[appliance]\nname = "de\x00mo"\n')),
                    "-o", str(c.path("pylock.toml"))], 2, (r"spec\.toml",)),
    Case("spec-not-utf8-build", None,
         lambda c: ["build", str(c.write("spec.toml", b'[appliance]\nname = "\xff\xfe"\n')), "-o", str(c.path("o.pex"))],
         2, (r"spec\.toml",)),
    Case("root-is-a-directory-verify", None, lambda c: ["verify", str(c.app), "--root", str(c.mkdir("root.json"))], 2,
         (r"root\.json", r"not a regular file|directory")),
    Case("archive-is-a-directory-verify", None, lambda c: ["verify", str(c.mkdir("d.pex")), "--root", c.root], 2,
         (r"d\.pex", r"not a regular file|directory")),
    Case("prefix-parent-is-a-file-install", None,
         lambda c: ["install", str(c.app), "--prefix", str(c.write("afile", "x") / "p"), "--root", c.root], 2,
         (r"afile",)),
    Case("keys-init-into-a-file", None, lambda c: ["keys", "init", str(c.write("k", "x"))], 2, (r"/k\b",)),
    Case("delta-with-absurd-header-length", None,
         lambda c: upgrade(c, c.write("x.delta", b"CHIRONDL" + struct.pack("<Q", 1 << 62)), c.prefix()), 1,
         (r"x\.delta", r"header")),
    Case("delta-extents-not-objects", None,
         lambda c: upgrade(c, delta(c, canonical({"format": "chiron-delta/1", "sha256": "0" * 64, "size": 0,
                                                  "extents": [[1, 2]]})), c.prefix()),
         1, (r"new\.delta", r"header")),
    Case("index-member-name-not-a-string", None,
         lambda c: ["verify", str(c.bad(index_hook=lambda i: i["members"][0].update(name=["appliance.json"]))),
                    "--root", c.root], 1, (r"index",), shape="report"),
    Case("deeply-nested-spec-build", None,
         lambda c: ["build", str(c.write("spec.toml", "deep = " + "[" * 5000 + "]" * 5000 + "\n")),
                    "-o", str(c.path("o.pex"))], 2, (r"spec\.toml",)),
    Case("noop-delta-upgrade-leaves-nothing", None,
         lambda c: upgrade(c, c.copy(c.fixture("same_delta"), "same.delta"), c.prefix()), 0, (r"already installed",),
         shape="ok"),
    Case("trace-file-in-missing-dir", None,
         lambda c: ["--trace-file", str(c.path("no/such/dir/t.jsonl")), "verify", str(c.app), "--root", c.root], 2,
         (r"t\.jsonl",)),
    Case("volume-esc-name-verify", None, lambda c: ["verify", str(forged_volume(c, name="demo" + ESC)), "--root", c.root],
         1, (r"name is not a printable string",), shape="report"),
    Case("volume-other-version-verify", None,
         lambda c: ["verify", str(forged_volume(c, version="9.9.9")), "--root", c.root], 1,
         (r"header names demo 9\.9\.9", r"signed metadata of demo 1\.0\.0"), shape="report"),
    Case("volume-truncated-receive", None, truncated_volume_receive, 1, (r"truncated",)),
    Case("volume-missing-join", None, missing_volume_join, 2, (r"missing volume\(s\) 2",)),
    Case("volume-copies-differ-join", None, differing_copies_join, 4, (r"both volume 1 of 2", r"differ")),
    Case("volume-join-into-directory", None,
         lambda c: ["join", str(volumes(c)[0].parent), "-o", str(c.mkdir("out")), "--root", c.root], 2,
         (r"is a directory",)),
    Case("volume-size-too-small-split", None,
         lambda c: ["split", str(c.app), "--size", "1M", "-o", str(c.path("v"))], 2, (r"use a --size of \d+",)),
    Case("volume-fifo-receive", None,
         lambda c: (os.mkfifo(c.path("fifo")), ["receive", str(c.path("fifo")), "--to", str(c.path("in"))])[1], 2,
         (r"not a regular file",)),
]
# fmt: on


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, appliance: Path, keys: Path) -> Path:
    """ONE host with the session appliance installed (through the CLI); cases copy it with cp -a."""
    base = tmp_path_factory.mktemp("hostile-installed")
    prefix = base / "p"
    r = run(
        ["install", str(appliance), "--prefix", str(prefix), "--root", str(keys / "1.root.json")],
        cwd=base,
        aux=base / "aux",
    )
    assert r.code == 0, str(r)
    return prefix


@pytest.fixture(scope="module")
def same_delta(tmp_path_factory: pytest.TempPathFactory, appliance: Path) -> Path:
    """A delta from the session appliance to itself (what re-running an upgrade with a delta gives)."""
    base = tmp_path_factory.mktemp("hostile-delta")
    r = run(["delta", str(appliance), str(appliance), "-o", str(base / "same.delta")], cwd=base, aux=base / "aux")
    assert r.code == 0, str(r)
    return base / "same.delta"


@pytest.fixture(scope="module")
def bomb_pex(tmp_path_factory: pytest.TempPathFactory, appliance: Path) -> Path:
    """The session appliance whose tool zip's __main__.py inflates to 3 GiB of zeros (a ~3 MB file)."""
    data, crc = zero_bomb(3 * GiB)
    bad = tmp_path_factory.mktemp("hostile-bomb") / "bomb.pex"
    return variant(appliance, bad, tool_zip=tool_zip_with(appliance, {"__main__.py": (data, crc, 3 * GiB)}))


# ---------------------------------------------------------------- the test


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _matches(text: str, expect: tuple[str, ...]) -> bool:
    return all(re.search(rx, text, re.IGNORECASE) for rx in expect)


def _shape_problems(case: Case, r: Result) -> list[str]:
    """What is wrong with the output's shape (see the module docstring), as messages."""
    err, out = _lines(r.err), _lines(r.out)
    found: list[str] = []
    if case.shape == "error":
        if len(err) != 1 or not err[0].startswith("chiron: error: "):
            found.append(f"stderr is not ONE 'chiron: error: ...' line ({len(err)} lines)")
        if out:
            found.append("the error also printed on stdout")
        if not any(_matches(line, case.expect) for line in err[:1]):
            found.append(f"the error does not name the problem: wanted {case.expect}")
    elif case.shape == "report":
        if not err or not err[0].startswith("chiron: ") or not all(line.startswith("  - ") for line in err[1:]):
            found.append("stderr is not a report: a 'chiron: ...' line, then one '  - PROBLEM' line per finding")
        if not any(_matches(line, case.expect) for line in err[1:]):
            found.append(f"no listed problem names {case.expect}")
    elif case.shape == "doctor":
        if err:
            found.append("doctor printed on stderr")
        if not out or not out[-1].startswith("not ready"):
            found.append("doctor's report does not end with 'not ready'")
        if not any(_matches(line, case.expect) for line in out if line.startswith("FAIL")):
            found.append(f"no FAIL check names {case.expect}")
    else:
        if not all(line.startswith(("notice: ", "warning: ")) for line in err):
            found.append("stderr holds more than notices and warnings")
        if not _matches(r.out + r.err, case.expect):
            found.append(f"the output does not say {case.expect}")
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    watched, aux = tmp_path / "case", tmp_path / "aux"
    (watched / "tmp").mkdir(parents=True)
    aux.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEX", "SOURCE_DATE_EPOCH"))}
    env.update(
        TMPDIR=str(watched / "tmp"), COLUMNS="200", NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1", MALLOC_ARENA_MAX="2"
    )
    ctx = Ctx(watched, aux, request, env)
    try:
        argv = case.setup(ctx)
        before = snapshot(watched)
        r = run(
            argv, cwd=watched, aux=aux, env=ctx.env, timeout=case.timeout, rlimit_as=case.rlimit_as, umask=case.umask
        )
        after = snapshot(watched)
    finally:
        for cleanup in reversed(ctx.cleanups):
            cleanup()
    # Every property is checked and all failures are reported together: the list is the fixer's to-do.
    found: list[str] = []
    if r.timed_out:
        found.append(f"still running after {case.timeout:.0f} s (killed)")
    if TRACEBACK in r.out + r.err:
        found.append("a Python traceback")
    if "internal error" in r.out + r.err:
        found.append("an internal error")
    unsafe = sorted({f"U+{ord(ch):04X}" for ch in UNSAFE_OUTPUT.findall(r.out + r.err)})
    if unsafe:
        found.append(f"raw terminal control or bidi characters in the output: {', '.join(unsafe)}")
    if r.code != case.exit:
        found.append(f"exit {r.code}, documented: {case.exit}")
    if r.code == case.exit or r.code not in (0, -9):  # a success or a kill says it all: no shape noise
        found += _shape_problems(case, r)
    changed = changes(before, after, ctx.mutable)
    if changed:
        more = f"\n    ... and {len(changed) - 12} more" if len(changed) > 12 else ""
        found.append(f"changed on disk ({len(changed)} paths):\n    " + "\n    ".join(changed[:12]) + more)
    if case.max_rss is not None and r.maxrss > case.max_rss:
        found.append(f"peak memory {r.maxrss >> 20} MiB, bound {case.max_rss >> 20} MiB")
    if case.check is not None and not r.timed_out:
        try:
            case.check(ctx, r)
        except AssertionError as exc:
            found.append(str(exc).split("\n")[0])
    assert not found, (
        f"issue 13 item {case.item or '-'}: " + "; ".join(found[:1]) + "\n- " + "\n- ".join(found) + f"\n{r}"
    )


# ---------------------------------------------------------------- items 12 and 16: scenarios, not single refusals


def _chiron(tmp: Path, *argv: str, timeout: float = 300) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEX", "SOURCE_DATE_EPOCH"))}
    r = run(list(argv), cwd=tmp, aux=tmp / ".aux", env=env, timeout=timeout)
    assert TRACEBACK not in r.out + r.err and "internal error" not in r.out + r.err, str(r)
    return r


def test_tampered_tool_zip_cache_is_never_signed(
    tmp_path: Path, good_spec: Path, tool_wheels: Path, session_cache: Path, appliance: Path
) -> None:
    """Item 12: whoever can write the tool-zip cache replaces the cached zip AND the record it is checked
    against. The build must not sign that zip: it rebuilds it from the tool wheels, or refuses (exit 3)
    naming the cache."""
    cache = tmp_path / "cache"
    shutil.copytree(session_cache / "tool", cache / "tool")
    records = sorted((cache / "tool").glob("*.json"))
    assert records, "the session cache holds no tool zip (the appliance fixture builds it)"
    for record in records:
        cached = record.with_suffix(".zip")
        with zipfile.ZipFile(cached, "a") as z:
            z.writestr("evil.py", "print('owned')\n")
        data = json.loads(record.read_text())
        data["sha256"] = hashlib.sha256(cached.read_bytes()).hexdigest()
        data["members"].append(
            {"name": "evil.py", "size": 15, "sha256": hashlib.sha256(b"print('owned')\n").hexdigest()}
        )
        record.write_text(json.dumps(data))
    out = tmp_path / "out" / "app.pex"
    r = _chiron(tmp_path, "build", str(good_spec), "-o", str(out), "--tool-wheels", str(tool_wheels),
                "--cache-dir", str(cache))  # fmt: skip
    if r.code == 0:
        with zipfile.ZipFile(out) as z:
            assert "evil.py" not in z.namelist(), f"the planted tool zip was signed into the appliance\n{r}"
    else:
        err = _lines(r.err)
        assert r.code == 3 and len(err) == 1 and err[0].startswith("chiron: error: "), str(r)
        assert "tool" in err[0] and str(cache) in err[0], f"the refusal does not name the cache\n{r}"
        assert not out.exists(), str(r)


def test_fast_forward_recovery_on_a_host(
    tmp_path: Path, installed: Path, keys: Path, index: Any, tool_wheels: Path, session_cache: Path, appliance: Path
) -> None:
    """Item 16: rotate the online keys (the TUF recovery from a fast-forward attack), after which the
    metadata versions start lower; the host must accept the new, lower versions signed by the new keys,
    trust them from then on, and refuse the old keys' archive."""
    prefix = tmp_path / "p"
    subprocess.run(["cp", "-a", str(installed), str(prefix)], check=True)
    chain = tmp_path / "chain"
    chain.mkdir()
    shutil.copyfile(keys / "1.root.json", chain / "1.root.json")
    new = tmp_path / "new-keys"
    assert _chiron(tmp_path, "keys", "init", str(new)).code == 0
    old_ids = json.loads((keys / "1.root.json").read_text())["signed"]["roles"]
    for n, role in enumerate(("timestamp", "snapshot", "targets"), start=2):
        r = _chiron(tmp_path, "keys", "rotate", role, "--root-dir", str(chain), "--add", str(new / f"{role}.pem"),
                    "--revoke", old_ids[role]["keyids"][0])  # fmt: skip
        assert r.code == 0 and (chain / f"{n}.root.json").is_file(), str(r)
        r = _chiron(tmp_path, "sign", str(chain / f"{n}.root.json"), "--key", f"file2:{keys / 'root.pem'}")
        assert r.code == 0, str(r)
        assert _chiron(tmp_path, "keys", "status", str(chain / f"{n}.root.json")).code == 0
    spec = write_spec(
        tmp_path / "spec", keys=keys, index_url=index.url, requirements=["alpha==1.0", "gamma==2.0"],
        environments=ENV_311 + ENV_312, version="1.0.1",
    )  # fmt: skip
    text = spec.read_text().replace(f'root = "{keys}/1.root.json"', f'root = "{chain}"')
    for role in ("targets", "snapshot", "timestamp"):
        text = text.replace(f"file2:{keys}/{role}.pem", f"file2:{new}/{role}.pem")
    spec.write_text(text)

    def build(version: str, metadata_version: int) -> Path:
        spec.write_text(re.sub(r'version = "[^"]*"', f'version = "{version}"', spec.read_text(), count=1))
        out = tmp_path / f"app-{version}.pex"
        r = _chiron(tmp_path, "build", str(spec), "-o", str(out), "--tool-wheels", str(tool_wheels),
                    "--cache-dir", str(session_cache), "--metadata-version", str(metadata_version))  # fmt: skip
        assert r.code == 0, str(r)
        return out

    def trusted_versions() -> dict[str, int]:
        r = _chiron(tmp_path, "status", "--prefix", str(prefix), "--json")
        assert r.code == 0, str(r)
        return {role: m["version"] for role, m in json.loads(r.out)["metadata"].items()}

    before = trusted_versions()
    assert min(before[r] for r in ("timestamp", "snapshot", "targets")) > 6, before
    online = ("timestamp", "snapshot", "targets")
    found: list[str] = []
    r = _chiron(tmp_path, "upgrade", str(build("1.0.1", 5)), "--prefix", str(prefix))
    if r.code != 0:
        found.append(f"the upgrade after the rotation (versions 5) was refused: exit {r.code}: {r.err.strip()}")
    after = trusted_versions()
    if any(after[k] != 5 for k in online):
        found.append(f"after it, the host still trusts the revoked keys' higher versions: {after}")
    r = _chiron(tmp_path, "upgrade", str(build("1.0.2", 6)), "--prefix", str(prefix))
    if r.code != 0:
        found.append(f"the next appliance (versions 6) was refused: exit {r.code}: {r.err.strip()}")
    if trusted_versions()["timestamp"] != 6:
        found.append(f"after it, the trusted versions are {trusted_versions()}, not 6")
    r = _chiron(tmp_path, "upgrade", str(appliance), "--prefix", str(prefix), "--allow-downgrade")
    if r.code != 1 or "signature" not in r.err:
        found.append(f"the old keys' archive was not refused as unsigned: exit {r.code}: {r.err.strip()}")
    assert not found, "issue 13 item 16:\n- " + "\n- ".join(found)
