"""Fuzz tests (hypothesis, issue 13) of the three readers of untrusted bytes: the archive reader (footer,
index, tiling, tool zip, metadata), the delta header reader, and the spec parser.

Each example goes through chiron's command line, in this process for speed (``run_cli``), and must
give what the table-driven tests in test_hostile.py demand of every hostile input:

- no exception other than SystemExit, no traceback, no "internal error";
- an exit code of the documented class for the input: a changed archive fails verification (1), a
  delta that is malformed fails (1) or needs pieces the host lacks (4), a bad spec is bad input (2);
- a one-line error (``chiron: error: ...``), or for ``verify`` its report (one line per problem);
- no raw terminal escape, C1 control or bidirectional override in the output;
- nothing left behind: no temporary or partial file, no change to the host but its audit log.

The runs are reproducible (``derandomize=True``, no example database) and bounded (``max_examples``)
so that each test takes well under a minute.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers import ENV_311, write_spec


def run_cli(argv: list[str], tmp: Path) -> tuple[int, str, str]:
    """Run ``chiron ARGV`` in this process (temporary files under ``tmp``); return (exit, stdout, stderr).

    Any exception but SystemExit propagates: that is a failure of the example.
    """
    from chiron.cli import main  # chiron's entry point

    out, err = io.StringIO(), io.StringIO()
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    code: Any = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        tempfile.tempdir = saved
    assert code is not None, "main() returned without exiting"
    return int(code or 0), out.getvalue(), err.getvalue()


FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    # No shrinking: a failing example is reported as generated, so a failing run stays as short as a
    # passing one (shrinking through 40 MB archives takes minutes); derandomize makes it the same each run.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
UNSAFE_OUTPUT = re.compile("[\x1b\x80-\x9f\u202a-\u202e\u2066-\u2069]")
FOOTER = struct.Struct("<8sQQQ32s")


def check_output(code: int, out: str, err: str, allowed: set[int], *, report: bool = False) -> None:
    """The properties every example must have (see the module docstring)."""
    shown = f"exit {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert "Traceback (most recent call last)" not in out + err, shown
    assert "internal error" not in out + err, shown
    unsafe = sorted({f"U+{ord(c):04X}" for c in UNSAFE_OUTPUT.findall(out + err)})
    assert not unsafe, f"raw terminal control or bidi characters in the output: {unsafe}\n{shown}"
    assert code in allowed, f"exit {code} is not one of {sorted(allowed)}\n{shown}"
    if code == 0:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    if report and lines and lines[0].startswith("chiron: verification FAILED"):
        assert len(lines) > 1 and all(line.startswith("  - ") for line in lines[1:]), f"not a report\n{shown}"
    else:
        assert len(lines) == 1 and lines[0].startswith("chiron: error: "), f"not ONE error line\n{shown}"


def listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` with its type, mode and size, and the sha256 of small files."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            digest = ""
            if p.is_file() and not p.is_symlink() and st_.st_size < (1 << 20):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st_.st_mode, st_.st_size if digest or not p.is_dir() else 0, digest)
    return out


def unchanged_but_audit(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    skip = ("audit.jsonl", "audit.head", "lock")
    return [
        f"{k}: {before.get(k)} -> {after.get(k)}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k) and k.rsplit("/", 1)[-1] not in skip
    ]


# ---------------------------------------------------------------- fixtures


class Good:
    """The good appliance's bytes and where its regions lie (docs/format.md)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        eocd = self.data.rindex(b"PK\x05\x06")
        cd_size, cd_offset = struct.unpack_from("<II", self.data, eocd + 12)
        self.zip_offset = eocd - cd_size - cd_offset
        _m, self.index_offset, index_length, _z, _s = FOOTER.unpack_from(self.data, self.zip_offset - FOOTER.size)
        self.index_raw = self.data[self.index_offset : self.index_offset + index_length]
        self.index = json.loads(self.index_raw)
        members = [(m["offset"], m["length"]) for m in self.index["members"]]
        # The regions a reader parses (a flip there goes deep), and the start of every region.
        self.regions = [
            (0, self.index["shebang_length"]),
            *[
                (o, n)
                for (o, n), m in zip(members, self.index["members"], strict=True)
                if not m["name"].startswith("wheels/")
            ],
            (self.index_offset, index_length),
            (self.zip_offset - FOOTER.size, FOOTER.size),
            (self.zip_offset + cd_offset, cd_size),
            (eocd, len(self.data) - eocd),
        ]
        self.boundaries = sorted({o for o, _n in self.regions} | {o + n for o, n in self.regions})

    def with_index(self, raw: bytes) -> bytes:
        """The archive with another index; the footer is recomputed so the reader goes past it."""
        zip_offset = self.index_offset + len(raw) + FOOTER.size
        footer = FOOTER.pack(b"CHIRONA1", self.index_offset, len(raw), zip_offset, hashlib.sha256(raw).digest())
        return self.data[: self.index_offset] + raw + footer + self.data[self.zip_offset :]


@pytest.fixture(scope="module")
def good(appliance: Path) -> Good:
    return Good(appliance)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _empty_tmp(work: Path) -> Path:
    tmp = work / "tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


# ---------------------------------------------------------------- (a) the archive reader


def byte_mutation(good: Good) -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """Flip a bit, overwrite, insert, truncate or append: mostly where a reader parses."""
    size = len(good.data)
    offset = st.one_of(
        st.sampled_from(good.regions).flatmap(lambda r: st.integers(r[0], r[0] + max(r[1], 1) - 1)),
        st.sampled_from(good.boundaries).flatmap(lambda b: st.integers(max(0, b - 8), min(size - 1, b + 8))),
        st.integers(0, size - 1),
    )
    junk = st.binary(min_size=1, max_size=48)

    def flip(o: int, bit: int) -> Callable[[bytes], bytes]:
        # After an earlier truncation the offset may lie past the end: flip the last byte instead.
        def apply(d: bytes) -> bytes:
            at = min(o, len(d) - 1)
            return d if at < 0 else d[:at] + bytes([d[at] ^ (1 << bit)]) + d[at + 1 :]

        return apply

    return st.one_of(
        st.builds(flip, offset, st.integers(0, 7)),
        st.builds(lambda o, j: lambda d: d[:o] + j + d[o + len(j) :], offset, junk),
        st.builds(lambda o, j: lambda d: d[:o] + j + d[o:], offset, junk),
        st.builds(lambda o: lambda d: d[:o], offset),
        st.builds(lambda j: lambda d: d + j, junk),
    )


@FUZZ
@given(data=st.data())
def test_mutated_archive_bytes(good: Good, keys: Path, work: Path, data: st.DataObject) -> None:
    """Bit flips, overwrites, insertions, truncations: verify fails (1), inspect reads it or fails (0, 1)."""
    mutations = data.draw(st.lists(byte_mutation(good), min_size=1, max_size=3), label="mutations")
    bad = good.data
    for m in mutations:
        bad = m(bad)
    target = work / "bad.pex"
    target.write_bytes(bad)
    tmp = _empty_tmp(work)
    code, out, err = run_cli(["verify", str(target), "--root", str(keys / "1.root.json")], tmp)
    check_output(code, out, err, {0} if bad == good.data else {1}, report=True)
    code, out, err = run_cli(["inspect", str(target)], tmp)
    check_output(code, out, err, {0, 1})
    assert sorted(p.name for p in work.iterdir()) == ["bad.pex", "tmp"] and not any(tmp.iterdir()), "files left"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NAMES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["appliance.json", "_archive/shebang", "_archive/tool.zip", "_archive/index", "metadata/².root.json",
                     "metadata/1.root.json", "../x", "/abs", "a//b", "wheels/\x1b[2Kok.whl", "wheels/\u202eexe.whl"]),
)  # fmt: skip
NUMBERS = st.one_of(st.integers(-(2**65), 2**65), st.integers(-64, 64), st.sampled_from([0, 2**31, 2**32, 2**63 - 1]))


def index_mutation(n_members: int) -> st.SearchStrategy[Callable[[dict[str, Any]], None]]:
    """One change to the index dict: a member's field, a member added, dropped, duplicated or moved, a
    top-level field changed, dropped or added, or a value of the wrong type."""
    i = st.integers(0, n_members - 1)

    def member_field(k: int, field: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix["members"][k].__setitem__(field, value)

    def shift(k: int, delta: int) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix["members"][k].__setitem__("offset", ix["members"][k]["offset"] + delta)

    def resize(k: int, delta: int) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix["members"][k].__setitem__("length", ix["members"][k]["length"] + delta)

    def drop(k: int) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix["members"].pop(k)

    def dup(k: int) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix["members"].insert(k, dict(ix["members"][k]))

    def swap(a: int, b: int) -> Callable[[dict[str, Any]], None]:
        def do(ix: dict[str, Any]) -> None:
            ix["members"][a], ix["members"][b] = ix["members"][b], ix["members"][a]

        return do

    def add(name: str, offset: int, length: int) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix["members"].append({"name": name, "offset": offset, "length": length})

    def top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix.__setitem__(key, value)

    def remove(key: str) -> Callable[[dict[str, Any]], None]:
        return lambda ix: ix.pop(key, None)

    return st.one_of(
        st.builds(shift, i, NUMBERS),
        st.builds(resize, i, NUMBERS),
        st.builds(member_field, i, st.sampled_from(["name", "offset", "length", "extra"]), JSON | NAMES | NUMBERS),
        st.builds(drop, i),
        st.builds(dup, i),
        st.builds(swap, i, i),
        st.builds(add, NAMES, NUMBERS, NUMBERS),
        st.builds(top, st.sampled_from(["format", "tool_format", "shebang_length", "members", "extra"]),
                  JSON | NUMBERS | st.sampled_from(["pex", "shiv", "chiron-appliance/2", 23, 256, 257, 2])),
        st.builds(remove, st.sampled_from(["format", "tool_format", "shebang_length", "members"])),
    )  # fmt: skip


def index_bytes(good: Good) -> st.SearchStrategy[bytes]:
    """A new index: the good one changed and written canonically (mostly) or not, any JSON, or nesting."""

    def render(mutations: list[Callable[[dict[str, Any]], None]], canonical: bool) -> bytes:
        ix = copy.deepcopy(good.index)
        for m in mutations:
            with contextlib.suppress(IndexError, KeyError, TypeError, AttributeError):
                m(ix)
        if canonical:
            return json.dumps(ix, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        return json.dumps(ix, indent=1).encode()

    n = len(good.index["members"])
    return st.one_of(
        st.builds(render, st.lists(index_mutation(n), min_size=1, max_size=3), st.just(True)),
        st.builds(render, st.lists(index_mutation(n), min_size=1, max_size=3), st.booleans()),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.integers(2, 5_000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(2, 5_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
        st.binary(max_size=64),
    )  # fmt: skip


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_mutated_index_with_a_consistent_footer(good: Good, keys: Path, work: Path, data: st.DataObject) -> None:
    """The index rewritten, its footer hash recomputed, so the reader parses it: verify fails (1) unless
    the bytes are the good ones; inspect reads it or fails (0, 1)."""
    raw = data.draw(index_bytes(good), label="index")
    target = work / "bad.pex"
    target.write_bytes(good.with_index(raw))
    tmp = _empty_tmp(work)
    code, out, err = run_cli(["verify", str(target), "--root", str(keys / "1.root.json")], tmp)
    check_output(code, out, err, {0} if raw == good.index_raw else {1}, report=True)
    code, out, err = run_cli(["inspect", str(target)], tmp)
    check_output(code, out, err, {0, 1})
    assert sorted(p.name for p in work.iterdir()) == ["bad.pex", "tmp"] and not any(tmp.iterdir()), "files left"


# ---------------------------------------------------------------- (b) the delta header reader


def _chiron(*argv: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "chiron", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@dataclass(frozen=True)
class Host:
    prefix: Path
    pristine: Path  # a copy of the prefix as installed, to start every example from
    delta: bytes  # a delta from the installed appliance to itself

    def reset(self) -> dict[str, tuple[Any, ...]]:
        """Start the example from the installed state (an earlier example may have changed it)."""
        now, then = listing(self.prefix), listing(self.pristine)
        if now != then:
            shutil.rmtree(self.prefix)
            subprocess.run(["cp", "-a", str(self.pristine), str(self.prefix)], check=True)
        return then


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, appliance: Path, keys: Path) -> Host:
    """A host with the good appliance installed, and a delta (from that appliance to itself) for it."""
    base = tmp_path_factory.mktemp("fuzz-host")
    _chiron("install", str(appliance), "--prefix", str(base / "p"), "--root", str(keys / "1.root.json"), cwd=base)
    _chiron("delta", str(appliance), str(appliance), "-o", str(base / "same.delta"), cwd=base)
    subprocess.run(["cp", "-a", str(base / "p"), str(base / "pristine")], check=True)
    return Host(base / "p", base / "pristine", (base / "same.delta").read_bytes())


def split_delta(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (hlen,) = struct.unpack_from("<Q", raw, 8)
    return json.loads(raw[16 : 16 + hlen]), raw[16 + hlen :]


def join_delta(header: bytes, carried: bytes) -> bytes:
    return b"CHIRONDL" + struct.pack("<Q", len(header)) + header + carried


def delta_bytes(good_delta: bytes) -> st.SearchStrategy[bytes]:
    """A delta with its header changed (length field recomputed), or its bytes changed anywhere."""
    header, carried = split_delta(good_delta)
    n = len(header["extents"])
    i = st.integers(0, n - 1)
    hexes = st.text("0123456789abcdef", min_size=0, max_size=70)
    extent_value = {
        "name": NAMES | JSON,
        "length": NUMBERS | JSON,
        "sha256": hexes | JSON,
        "carried": st.booleans() | JSON,
    }

    def edit_extent(k: int, field: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda h: h["extents"][k].__setitem__(field, value)

    def drop_extent(k: int) -> Callable[[dict[str, Any]], None]:
        return lambda h: h["extents"].pop(k)

    def dup_extent(k: int) -> Callable[[dict[str, Any]], None]:
        return lambda h: h["extents"].insert(k, dict(h["extents"][k]))

    def swap_extents(a: int, b: int) -> Callable[[dict[str, Any]], None]:
        def do(h: dict[str, Any]) -> None:
            h["extents"][a], h["extents"][b] = h["extents"][b], h["extents"][a]

        return do

    def top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda h: h.__setitem__(key, value)

    mutation = st.one_of(
        st.sampled_from(sorted(extent_value)).flatmap(lambda f: st.builds(edit_extent, i, st.just(f), extent_value[f])),
        st.builds(drop_extent, i),
        st.builds(dup_extent, i),
        st.builds(swap_extents, i, i),
        st.builds(top, st.sampled_from(["format", "name", "version", "size", "sha256", "extents", "extra"]),
                  JSON | NUMBERS | hexes),
    )  # fmt: skip

    def render(mutations: list[Callable[[dict[str, Any]], None]]) -> bytes:
        h = copy.deepcopy(header)
        for m in mutations:
            with contextlib.suppress(IndexError, KeyError, TypeError, AttributeError):
                m(h)
        return join_delta(json.dumps(h, sort_keys=True, separators=(",", ":")).encode(), carried)

    size = len(good_delta)
    offset = st.one_of(st.integers(0, 40), st.integers(0, size - 1))
    junk = st.binary(min_size=1, max_size=32)
    return st.one_of(
        st.builds(render, st.lists(mutation, min_size=1, max_size=3)),
        JSON.map(lambda v: join_delta(json.dumps(v).encode(), carried)),
        st.integers(2, 5_000).map(lambda d: join_delta(b"[" * d + b"]" * d, carried)),
        st.builds(lambda v: good_delta[:8] + struct.pack("<Q", v) + good_delta[16:], st.integers(0, 2**64 - 1)),
        st.builds(lambda o, b: good_delta[:o] + bytes([good_delta[o] ^ (1 << b)]) + good_delta[o + 1 :], offset,
                  st.integers(0, 7)),
        st.builds(lambda o: good_delta[:o], offset),
        st.builds(lambda o, j: good_delta[:o] + j + good_delta[o:], offset, junk),
    )  # fmt: skip


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_mutated_delta(host: Host, work: Path, data: st.DataObject) -> None:
    """``upgrade`` with a mutated delta: a no-op when it still rebuilds the installed appliance (0), else
    malformed or rebuilt wrong (1), or needing pieces the host lacks (4); the host unchanged but its audit
    log, nothing left in staging."""
    prefix = host.prefix
    bad = data.draw(delta_bytes(host.delta), label="delta")
    target = work / "bad.delta"
    target.write_bytes(bad)
    tmp = _empty_tmp(work)
    before = host.reset()
    code, out, err = run_cli(["upgrade", str(target), "--prefix", str(prefix)], tmp)
    check_output(code, out, err, {0, 1, 4}, report=False)
    changed = unchanged_but_audit(before, listing(prefix))
    assert not changed, "the host changed:\n" + "\n".join(changed[:20]) + f"\n--- stderr\n{err[-2000:]}"
    assert not any(tmp.iterdir()), f"temporary files left: {sorted(p.name for p in tmp.iterdir())}"


# ---------------------------------------------------------------- (c) the spec parser


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(doc: dict[str, Any]) -> str:
    """A TOML document holding ``doc`` (every table inline: tomllib reads back the same dict)."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


TOML_VALUES = st.recursive(
    st.one_of(
        st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30),
        st.datetimes(timezones=st.just(UTC)),
        st.sampled_from(["", "0d", "5x", "never", "-1d", "99999999999d", "${NOPE}", "${HOME:-x}", "/dev/zero",
                         "a\x00b", "file2:/nonexistent.pem", "cp311", "3.11", "linux/amd64", "manylinux_2_17_x86_64",
                         "\x1b[2Kfake", "\u202eevil", "../../etc/passwd"]),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)  # fmt: skip
SECTIONS = ("appliance", "python", "environments", "trust", "files", "images", "host", "extra")


@pytest.fixture(scope="module")
def spec_base(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> tuple[Path, dict[str, Any], str]:
    """A valid spec that names a lock file (absent: a valid spec stops at the lock, with no network) and
    an index that does not exist (should a mutation drop the lock)."""
    import tomllib

    d = tmp_path_factory.mktemp("fuzz-spec")
    spec = write_spec(d, keys=keys, index_url="file:///nonexistent/simple", requirements=["alpha==1.0"],
                      environments=ENV_311, extra_python='lock = "missing-pylock.toml"')  # fmt: skip
    text = spec.read_text()
    return d, tomllib.loads(text), text


def spec_documents(base: dict[str, Any], text: str) -> st.SearchStrategy[str]:
    def set_path(doc: dict[str, Any], path: list[str], value: Any) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) and isinstance(node.get(key), dict | list) else None
            if isinstance(node, list):
                node = node[0] if node and isinstance(node[0], dict) else None
            if node is None:
                return
        if isinstance(node, dict):
            node[path[-1]] = value

    def delete_path(doc: dict[str, Any], path: list[str]) -> None:
        set_path(doc, path, None)
        node: Any = doc
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            node = node[0] if isinstance(node, list) and node else node
        if isinstance(node, dict):
            node.pop(path[-1], None)

    keys_in = sorted({f"{s}.{k}" for s, v in base.items() if isinstance(v, dict) for k in v} | set(SECTIONS))
    paths = st.one_of(st.sampled_from(keys_in), st.lists(st.text(max_size=8), min_size=1, max_size=3).map(".".join))

    def edited(edits: list[tuple[str, str, Any]]) -> str:
        doc = copy.deepcopy(base)
        for kind, path, value in edits:
            parts = path.split(".")
            if kind == "set":
                set_path(doc, parts, value)
            else:
                delete_path(doc, parts)
        return toml_document(doc)

    edit = st.tuples(st.sampled_from(["set", "set", "delete"]), paths, TOML_VALUES)
    pos = st.integers(0, len(text))
    return st.one_of(
        st.builds(edited, st.lists(edit, min_size=1, max_size=4)),
        st.builds(lambda p, s: text[:p] + s + text[p:], pos, st.text(max_size=20)),
        st.builds(lambda p, n: text[:p] + text[p + n :], pos, st.integers(1, 40)),
        st.builds(lambda p: text[:p], pos),
        st.integers(2, 5_000).map(lambda d: text + "deep = " + "[" * d + "]" * d + "\n"),
        st.integers(2, 5_000).map(lambda d: text + "deep = " + "{a = " * d + "1" + "}" * d + "\n"),
        st.text(max_size=200),
    )


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_generated_specs(spec_base: tuple[Path, dict[str, Any], str], tool_wheels: Path, work: Path,
                         data: st.DataObject) -> None:  # fmt: skip
    """``build`` of a generated spec: a bad spec is bad input (2); a valid one stops at its (absent) lock
    (2) or, without a lock, at the (absent) index (2 or 3); nothing is written."""
    directory, _base, text = spec_base
    document = data.draw(spec_documents(_base, text), label="spec")
    spec = directory / "fuzzed.toml"
    spec.write_bytes(document.encode("utf-8", "surrogatepass"))
    out = work / "out"
    out.mkdir(exist_ok=True)
    tmp = _empty_tmp(work)
    code, stdout, err = run_cli(
        ["build", str(spec), "-o", str(out / "app.pex"), "--tool-wheels", str(tool_wheels),
         "--cache-dir", str(work / "cache")], tmp,
    )  # fmt: skip
    check_output(code, stdout, err, {2, 3})
    assert not any(out.iterdir()) and not any(tmp.iterdir()), "files left behind"
