"""verify rejects every kind of tampering with the right message and exit code 1 (table-driven)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiron.archive.reader import read_layout
from chiron.archive.toolzip import check_zip
from chiron.cli import main
from chiron.trust import metadata as _trust

from conftest import do_build
from helpers import assert_cli_verify_fails, rewrite_archive


@dataclass(frozen=True)
class Ctx:
    good: Path
    tmp: Path
    keys: Path
    other_keys: Path

    @property
    def out(self) -> Path:
        return self.tmp / "tampered.pex"

    def member_bytes(self, name: str) -> bytes:
        m = read_layout(self.good).member(name)
        assert m is not None, name
        return self.good.read_bytes()[m.offset : m.offset + m.length]

    def flip(self, offset: int) -> Path:
        data = bytearray(self.good.read_bytes())
        data[offset] ^= 0x01
        self.out.write_bytes(bytes(data))
        return self.out

    def raw(self, data: bytes) -> Path:
        self.out.write_bytes(data)
        return self.out


def _wheel(c: Ctx) -> Path:
    m = read_layout(c.good).member("wheels/alpha-1.0-py3-none-any.whl")
    assert m is not None
    return c.flip(m.offset + m.length // 2)


def _tool_code(c: Ctx) -> Path:
    with c.good.open("rb") as f:
        entries, problems = check_zip(f.fileno(), read_layout(c.good))
    assert not problems
    entry = next(e for e in entries if e.name.endswith("chiron/engines/verify.py"))
    return c.flip(entry.data_offset + entry.compressed_size // 2)


def _metadata(c: Ctx) -> Path:
    m = read_layout(c.good).member("metadata/targets.json")
    assert m is not None
    body = bytearray(c.member_bytes("metadata/targets.json"))
    pos = body.index(b'"length": ') + len(b'"length": ')
    body[pos] = ord("9") if body[pos] != ord("9") else ord("8")
    return rewrite_archive(c.good, c.out, replace={"metadata/targets.json": bytes(body)})


def _timestamp_whitespace(c: Ctx) -> Path:
    body = c.member_bytes("metadata/timestamp.json") + b"\n"
    return rewrite_archive(c.good, c.out, replace={"metadata/timestamp.json": body})


def _added_payload(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, add={"wheels/evil-1.0-py3-none-any.whl": b"PK evil"})


def _added_zip_member(c: Ctx) -> Path:
    c.out.write_bytes(c.good.read_bytes())
    with zipfile.ZipFile(c.out, "a") as z:
        z.writestr("evil.py", "print('owned')")
    return c.out


def _tool_zip_with(c: Ctx, extra: str) -> bytes:
    layout = read_layout(c.good)
    buf = io.BytesIO()
    with zipfile.ZipFile(c.good) as zin, zipfile.ZipFile(buf, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(extra, "print('owned')")
    del layout
    return buf.getvalue()


def _duplicate_zip_member(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, tool_zip=_tool_zip_with(c, "__main__.py"))


def _unsigned_zip_member_consistent(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, tool_zip=_tool_zip_with(c, "evil.py"))


def _duplicate_index_member(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, add={"appliance.json": b"{}"})


def _prepended(c: Ctx) -> Path:
    return c.raw(b"#!/bin/sh\necho owned\n" + c.good.read_bytes())


def _inserted_raw(c: Ctx) -> Path:
    data = c.good.read_bytes()
    m = read_layout(c.good).member("lock/pylock.toml")
    assert m is not None
    return c.raw(data[: m.offset] + b"JUNK" + data[m.offset :])


def _inserted_gap(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, gap_after="lock/pylock.toml")


def _appended(c: Ctx) -> Path:
    return c.raw(c.good.read_bytes() + b"\n#!/bin/sh echo owned\n")


def _shebang(c: Ctx) -> Path:
    data = c.good.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    return c.raw(b"#!/usr/bin/env python9\n" + data[len(b"#!/usr/bin/env python3\n") :])


def _truncated(c: Ctx) -> Path:
    return c.raw(c.good.read_bytes()[:-1000])


def _removed(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, remove=("wheels/beta-1.1-py3-none-any.whl",))


def _traversal(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, add={"../../etc/cron.d/evil": b"* * * * * root sh"})


def _overlap(c: Ctx) -> Path:
    def hook(index: dict) -> None:
        index["members"][2]["offset"] -= 4
        index["members"][2]["length"] += 4

    return rewrite_archive(c.good, c.out, index_hook=hook)


def _index_extra_field(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, index_hook=lambda index: index.update(note="x" * 1000))


def _index_tool_format(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, index_hook=lambda index: index.update(tool_format="shiv"))


def _wrong_key(c: Ctx) -> Path:
    """targets re-signed by a key the root does not list; snapshot and timestamp re-signed correctly."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile

    def signer(keys: Path, role: str) -> CryptoSigner:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return CryptoSigner(load_pem_private_key((keys / f"{role}.pem").read_bytes(), None))  # type: ignore[arg-type]

    targets = Metadata.from_bytes(c.member_bytes("metadata/targets.json"))
    targets.signatures.clear()
    targets.sign(signer(c.other_keys, "targets"))
    tbytes = _trust.to_bytes(targets)
    snapshot = Metadata.from_bytes(c.member_bytes("metadata/snapshot.json"))
    snapshot.signed.meta["targets.json"] = MetaFile.from_data(targets.signed.version, tbytes, ["sha256"])
    snapshot.signatures.clear()
    snapshot.sign(signer(c.keys, "snapshot"))
    sbytes = _trust.to_bytes(snapshot)
    ts = Metadata.from_bytes(c.member_bytes("metadata/timestamp.json"))
    ts.signed.snapshot_meta = MetaFile.from_data(snapshot.signed.version, sbytes, ["sha256"])
    ts.signatures.clear()
    ts.sign(signer(c.keys, "timestamp"))
    return rewrite_archive(
        c.good,
        c.out,
        replace={
            "metadata/targets.json": tbytes,
            "metadata/snapshot.json": sbytes,
            "metadata/timestamp.json": _trust.to_bytes(ts),
        },
    )


def _aliasing_shebang(c: Ctx) -> Path:
    """A payload member named like the format's shebang region: its unsigned bytes must not pass as
    the (signed) shebang."""
    return rewrite_archive(c.good, c.out, add={"_archive/shebang": b"#!/bin/sh\necho unsigned\n"})


def _superscript_root(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, add={"metadata/\u00b2.root.json": c.member_bytes("metadata/1.root.json")})


def _escape_codes_in_name(c: Ctx) -> Path:
    return rewrite_archive(c.good, c.out, add={"wheels/\x1b[2K\x1b[1Averified.whl": b"PK"})


CASES: list[tuple[str, Callable[[Ctx], Path], str]] = [
    ("flipped byte in a wheel", _wheel, "member wheels/alpha-1.0-py3-none-any.whl: sha256 does not match"),
    ("flipped byte in the tool's code", _tool_code, "chiron/engines/verify.py"),
    ("edited targets metadata", _metadata, "metadata"),
    (
        "metadata not in canonical form",
        _timestamp_whitespace,
        "metadata/timestamp.json: not in the canonical form",
    ),
    ("unsigned payload member added", _added_payload, "member wheels/evil-1.0-py3-none-any.whl: not signed"),
    ("zip member appended with zipfile", _added_zip_member, "layout:"),
    (
        "unsigned zip member, zip rebuilt",
        _unsigned_zip_member_consistent,
        "tool zip member evil.py: not signed",
    ),
    ("duplicated zip member name", _duplicate_zip_member, "tool zip member __main__.py: appears twice"),
    ("duplicated index member name", _duplicate_index_member, "member appliance.json: listed twice"),
    ("data prepended", _prepended, "layout:"),
    ("data inserted without fixing the index", _inserted_raw, "layout:"),
    ("data inserted between members", _inserted_gap, "unaccounted byte(s)"),
    ("data appended", _appended, "layout:"),
    ("changed shebang", _shebang, "member _archive/shebang: sha256 does not match"),
    ("truncated archive", _truncated, "layout:"),
    ("removed member", _removed, "member wheels/beta-1.1-py3-none-any.whl: signed in targets but missing"),
    ("path that escapes", _traversal, "unsafe name"),
    ("overlapping members", _overlap, "overlaps"),
    ("targets signed by the wrong key", _wrong_key, "signature check failed"),
    ("unsigned data hidden in the index", _index_extra_field, "index has unknown or missing fields"),
    ("tool format changed in the index", _index_tool_format, "differs from the signed tool format"),
    ("member named like a format region", _aliasing_shebang, "member _archive/shebang: not allowed"),
    ("root named with a superscript digit", _superscript_root, "only N.root.json"),
    ("terminal escape codes in a member name", _escape_codes_in_name, "'wheels/\\x1b[2K\\x1b[1Averified.whl'"),
]


@pytest.mark.parametrize(("what", "tamper", "expect"), CASES, ids=[c[0] for c in CASES])
def test_tampering_is_rejected(
    what: str,
    tamper: Callable[[Ctx], Path],
    expect: str,
    appliance: Path,
    tmp_path: Path,
    keys: Path,
    other_keys: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tamper(Ctx(appliance, tmp_path, keys, other_keys))
    assert_cli_verify_fails(bad, appliance, keys, capsys, expect)


def test_wrong_root_file_is_rejected(appliance: Path, other_keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(appliance), "--root", str(other_keys / "1.root.json")])
    assert exc.value.code == 1
    assert "signature check failed" in capsys.readouterr().err


def test_wrong_root_sha256_is_rejected(appliance: Path, other_keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp = hashlib.sha256((other_keys / "1.root.json").read_bytes()).hexdigest()
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(appliance), "--root-sha256", fp])
    assert exc.value.code == 1
    assert f"no root metadata in the archive has sha256 {fp}" in capsys.readouterr().err


def test_expired_metadata_is_rejected(
    good_spec: Path,
    tool_wheels: Path,
    session_cache: Path,
    tmp_path: Path,
    keys: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = do_build(good_spec, tmp_path / "old.pex", tool_wheels, session_cache, epoch=int(time.time()) - 3 * 86400)
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(old.output), "--root", str(keys / "1.root.json")])
    assert exc.value.code == 1
    assert "metadata: expired: timestamp.json is expired" in capsys.readouterr().err


def test_not_an_appliance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("__main__.py", "print(1)")
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(plain)])
    assert exc.value.code == 1
    assert "not a chiron appliance" in capsys.readouterr().err


def test_verify_json_lists_problems(
    appliance: Path, tmp_path: Path, keys: Path, other_keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    bad = _wheel(Ctx(appliance, tmp_path, keys, other_keys))
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(bad), "--json"])
    assert exc.value.code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["schema"] == "chiron.verify/1"
    assert any("wheels/alpha" in p for p in report["problems"])
    assert os.path.basename(report["path"]) == "tampered.pex"
