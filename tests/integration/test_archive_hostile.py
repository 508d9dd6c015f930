"""Hostile archives, deltas and inputs against the reader, the TUF client, verify, inspect and diff
(issue 13 items 1, 2, 7, 8, 9, 10, 14, 15): a one-line finding or error naming the problem, the
documented exit code, nothing printed raw, nothing read without a bound.

Most cases use a mini appliance written here with the archive writer and signed with the session's
dev keys (no pex: milliseconds each); a few run the CLI on the session's real appliance.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tracemalloc
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import TargetFile

from chiron.archive import delta
from chiron.archive import reader as _reader
from chiron.archive.layout import CHUNK, SHEBANG_TARGET, TOOL_MEMBERS_TARGET, TOOL_TARGET, root_version
from chiron.archive.reader import ArchiveReader, read_file, read_layout
from chiron.archive.toolzip import ZipEntry, check_zip, diagnose_tool, normalize_zip, read_zip_member
from chiron.archive.writer import ArchiveWriter
from chiron.cli import main
from chiron.core.text import check_member_name, parse_json, printable
from chiron.engines.diff import diff
from chiron.engines.diff import render as render_diff
from chiron.engines.inspect import inspect_archive
from chiron.engines.verify import verify
from chiron.errors import FormatError, UsageError, VerificationError
from chiron.trust import client as _client
from chiron.trust.anchor import RootFingerprint, TrustOnFirstUse, anchor_from_options
from chiron.trust.metadata import build_repository

from helpers import rewrite_archive

SHEBANG = b"#!/usr/bin/env python3\n"
ESC_NAME = "wheels/\x1b[2K\x1b[1A\rverified ok.whl"  # erases the line above, draws a fake verdict
RLO_NAME = "files/report\u202egpj.exe"


# ---------------------------------------------------------------- a mini appliance, signed for real


def _signer(keys: Path, role: str) -> CryptoSigner:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return CryptoSigner(load_pem_private_key((keys / f"{role}.pem").read_bytes(), None))  # type: ignore[arg-type]


def _tool_zip(tmp: Path, files: dict[str, bytes] | None = None) -> Path:
    raw, out = tmp / "tool.raw", tmp / "tool.zip"
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (files or {"__main__.py": b"print('mini')\n"}).items():
            z.writestr(name, data)
    normalize_zip(raw, out, (1980, 1, 1, 0, 0, 0))
    return out


def mini(
    tmp: Path,
    keys: Path,
    members: dict[str, bytes] | None = None,
    *,
    kinds: dict[str, str] | None = None,
    manifest: Any = None,
    tool: Path | None = None,
    name: str = "mini.pex",
) -> Path:
    """A small appliance: ``members`` (default: a manifest and one file) signed as targets of
    ``kinds`` (default "file"), the shebang and a tool zip, under the keys' root."""
    tool = tool or _tool_zip(tmp)
    body = {"name": "mini", "version": "1.0"} if manifest is None else manifest
    members = {"appliance.json": json.dumps(body).encode(), "files/a.txt": b"a\n", **(members or {})}
    kinds = {"appliance.json": "manifest", **(kinds or {})}
    with zipfile.ZipFile(tool) as z:
        listing = [
            {"name": i.filename, "size": i.file_size, "sha256": hashlib.sha256(z.read(i)).hexdigest()}
            for i in z.infolist()
        ]
    members[TOOL_MEMBERS_TARGET] = json.dumps(listing).encode()
    kinds.setdefault(TOOL_MEMBERS_TARGET, "tool-members")
    out = tmp / name
    writer = ArchiveWriter(out, SHEBANG)
    targets: dict[str, TargetFile] = {}
    for member, data in members.items():
        writer.add_bytes(member, data)
        targets[member] = TargetFile.from_data(member, data, ["sha256"])
        targets[member].unrecognized_fields["custom"] = {"kind": kinds.get(member, "file")}
    targets[SHEBANG_TARGET] = TargetFile.from_data(SHEBANG_TARGET, SHEBANG, ["sha256"])
    targets[SHEBANG_TARGET].unrecognized_fields["custom"] = {"kind": kinds.get(SHEBANG_TARGET, "shebang")}
    targets[TOOL_TARGET] = TargetFile.from_file(TOOL_TARGET, str(tool), ["sha256"])
    targets[TOOL_TARGET].unrecognized_fields["custom"] = {"kind": kinds.get(TOOL_TARGET, "tool"), "format": "pex"}
    signers = {role: [_signer(keys, role)] for role in ("targets", "snapshot", "timestamp")}
    expires = dict.fromkeys(("targets", "snapshot", "timestamp"), timedelta(days=1))
    metadata = build_repository(
        [(keys / "1.root.json").read_bytes()], signers, targets, now=datetime.now(UTC), expires=expires, version=1
    )
    for member in sorted(metadata):
        writer.add_bytes(member, metadata[member])
    writer.finish(tool, "pex")
    return out


def _problems(path: Path, keys: Path) -> list[str]:
    report = verify(path, root_file=keys / "1.root.json")
    assert not report.ok
    return report.problems


def test_mini_appliance_verifies(tmp_path: Path, keys: Path) -> None:
    report = verify(mini(tmp_path, keys), root_file=keys / "1.root.json")
    assert report.ok, report.problems
    assert (report.name, report.version) == ("mini", "1.0") and report.warnings == []


# ---------------------------------------------------------------- item 2: names that draw on the terminal


@pytest.mark.parametrize(
    "bad",
    ["a\x1bb", "a\x9bb", "a\x7fb", "a\x00b", "a\u202eb", "a\u202ab", "a\u2066b", "a\u2069b", "a\u200eb", "a\u200fb",
     "a\u061cb", "a\u2028b", "a\ud800b"],
)  # fmt: skip
def test_member_names_with_control_or_bidi_characters_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"control or format character U\+") as exc:
        check_member_name(f"files/{bad}")
    assert all(c.isprintable() for c in str(exc.value))  # the message itself is escaped
    writer = ArchiveWriter(tmp_path / "x.pex", SHEBANG)
    with pytest.raises(ValueError, match="control or format"):
        writer.add_bytes(f"files/{bad}", b"x")
    writer.abort()


def test_printable_escapes_everything_a_terminal_would_act_on() -> None:
    assert printable("wheels/ok-1.0.whl") == "'wheels/ok-1.0.whl'"
    shown = printable("a\x1b[2K\r\u202eb\u2066\x9b\x7f\U000e0001")
    assert shown == "'a\\x1b[2K\\x0d\\u202eb\\u2066\\x9b\\x7f\\U000e0001'"
    assert shown.isprintable()


@pytest.mark.parametrize("name", [ESC_NAME, RLO_NAME])
def test_verify_never_prints_an_archive_name_raw(
    name: str, appliance: Path, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = rewrite_archive(appliance, tmp_path / "bad.pex", add={name: b"payload"})
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(bad), "--root", str(keys / "1.root.json")])
    out, err = capsys.readouterr()
    assert exc.value.code == 1
    assert "verification FAILED" in err and "unsafe name" in err and "Traceback" not in err
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert printable(name)[1:-1] in err


def test_inspect_and_diff_escape_what_they_print(tmp_path: Path, keys: Path) -> None:
    """A signed manifest and lock may still hold hostile text: inspect and diff show it escaped."""
    manifest = {"name": "mini\x1b[2J", "version": "1.0\u202e", "environments": [], "images": []}
    lock = b'lock-version = "1.0"\n[[packages]]\nname = "evil\\u001b[1A"\nversion = "1"\nwheels = []\n'
    app = mini(tmp_path, keys, {"lock/pylock.toml": lock}, manifest=manifest)
    from chiron.engines.inspect import render

    text = render(inspect_archive(app))
    assert "\x1b" not in text and "\u202e" not in text
    assert "mini\\x1b[2J" in text and "evil\\x1b[1A" in text
    other = mini(tmp_path, keys, name="other.pex")
    rendered = render_diff(diff(other, app))
    assert "\x1b" not in rendered and "evil\\x1b[1A" in rendered


# ---------------------------------------------------------------- item 14: names the format reserves


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (SHEBANG_TARGET, "reserved for the format's own regions"),
        (TOOL_TARGET, "reserved for the format's own regions"),
        ("_archive/index", "reserved for the format's own regions"),
        ("_archive/anything", "reserved for the format's own regions"),
        ("metadata/\u00b2.root.json", "only N.root.json"),
        ("metadata/01.root.json", "only N.root.json"),
        ("metadata/notes.json", "only N.root.json"),
    ],
)
def test_reserved_names_are_refused_by_writer_reader_and_verify(
    name: str, why: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = ArchiveWriter(tmp_path / "w.pex", SHEBANG)
    with pytest.raises(ValueError, match=why.split(" (")[0]):
        writer.add_bytes(name, b"x")
    writer.abort()
    good = mini(tmp_path, keys)
    bad = rewrite_archive(good, tmp_path / "bad.pex", add={name: b"#!/bin/sh\necho unsigned\n"})
    with pytest.raises(FormatError, match="not allowed"):
        read_layout(bad)
    problems = _problems(bad, keys)
    assert any(why in p and "not allowed" in p for p in problems), problems
    for command in (["inspect", str(bad)], ["diff", str(good), str(bad)]):
        with pytest.raises(SystemExit) as exc:
            main(command)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and "not allowed" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_root_version_takes_ascii_digits_only() -> None:
    assert [root_version(n) for n in ("1.root.json", "12.root.json", "\u00b2.root.json", "\u0661.root.json")] == [
        1,
        12,
        None,
        None,
    ]
    assert root_version("0.root.json") is None and root_version("1.root.json.bak") is None


def test_a_payload_member_cannot_vouch_for_a_format_region(tmp_path: Path, keys: Path) -> None:
    """Targets are matched by kind too: whatever the names, a member signed as the tool or the
    shebang region is refused, and so is a format region signed as a member."""
    as_tool = mini(tmp_path, keys, kinds={"files/a.txt": "tool"}, name="t.pex")
    assert any("a payload member signed as the format's own tool region" in p for p in _problems(as_tool, keys))
    as_wheel = mini(tmp_path, keys, kinds={SHEBANG_TARGET: "wheel"}, name="s.pex")
    assert any("shebang region is signed as 'wheel'" in p for p in _problems(as_wheel, keys))


def test_regions_never_alias() -> None:
    from chiron.archive.layout import Layout, Member

    layout = Layout(10, SHEBANG, (Member(SHEBANG_TARGET, 23, 1),), 24, 0, 30, "pex", {})
    with pytest.raises(FormatError, match="appears twice or takes a name the format reserves"):
        layout.regions()


# ---------------------------------------------------------------- item 8: crafted structures


def test_deeply_nested_index_is_malformed_not_a_crash(tmp_path: Path, keys: Path) -> None:
    good = mini(tmp_path, keys)
    deep = rewrite_archive(good, tmp_path / "deep.pex", index_hook=lambda i: i.update(members=[[[[0]]]]))
    with pytest.raises(FormatError, match="index member entries"):
        read_layout(deep)
    layout = read_layout(good)
    raw = b"[" * 100_000 + b"]" * 100_000
    data = good.read_bytes()
    from chiron.archive.layout import FOOTER, FOOTER_MAGIC

    nested = tmp_path / "nested.pex"
    nested.write_bytes(
        data[: layout.index_offset]
        + raw
        + FOOTER.pack(
            FOOTER_MAGIC,
            layout.index_offset,
            len(raw),
            layout.index_offset + len(raw) + 64,
            hashlib.sha256(raw).digest(),
        )
        + data[layout.zip_offset :]
    )
    report = verify(nested, root_file=keys / "1.root.json")
    assert report.problems == ["layout: index: JSON nested too deeply"]


def test_member_count_is_bounded(tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reader, "MAX_MEMBERS", 5)
    with pytest.raises(FormatError, match="over the limit of 5 chiron reads"):
        read_layout(mini(tmp_path, keys))


@pytest.mark.parametrize(
    ("manifest", "expect"),
    [
        (["a", "list"], "is list, not a JSON object"),
        ({"name": 7, "version": "1"}, "name is int, not str"),
        ({"name": "x", "version": "1", "environments": [{"name": "e"}]}, "environments[0]: has no python_version"),
        ({"name": "x", "version": "1", "images": "none"}, "images is str, not list"),
    ],
)
def test_manifest_of_the_wrong_shape(
    manifest: Any, expect: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = mini(tmp_path, keys, manifest=manifest)
    assert any(f"member appliance.json: {expect}" in p for p in _problems(app, keys))
    for command in (["inspect", str(app)], ["diff", str(app), str(app)]):
        with pytest.raises(SystemExit) as exc:
            main(command)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and expect in err and "Traceback" not in err, err


def test_malformed_lock_and_sbom_in_inspect(tmp_path: Path, keys: Path) -> None:
    deep = b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n"
    for lock, expect in ((deep, "nested too deeply"), (b"packages = [1]\n", "packages[0]: is not a table")):
        app = mini(tmp_path, keys, {"lock/pylock.toml": lock}, name="l.pex")
        with pytest.raises(VerificationError, match=expect.replace("[", r"\[")):
            inspect_archive(app)
    app = mini(tmp_path, keys, {"sbom/cyclonedx.json": b'{"components": [1]}'}, name="s.pex")
    with pytest.raises(VerificationError, match="not a CycloneDX document"):
        inspect_archive(app)


def test_overlapping_members_in_inspect_and_diff(
    appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def hook(index: dict[str, Any]) -> None:
        index["members"][2]["offset"] -= 4
        index["members"][2]["length"] += 4

    bad = rewrite_archive(appliance, tmp_path / "overlap.pex", index_hook=hook)
    for command in (["inspect", str(bad)], ["diff", str(appliance), str(bad)]):
        with pytest.raises(SystemExit) as exc:
            main(command)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and "overlaps" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- item 15: metadata bounded before it is read


def test_oversized_metadata_is_refused_before_it_is_read(
    tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = mini(tmp_path, keys)
    ts = read_layout(good).member("metadata/timestamp.json")
    assert ts is not None
    big = good.read_bytes()[ts.offset : ts.offset + ts.length] + b" " * (_client.METADATA_LIMITS["timestamp"] + 1)
    bad = rewrite_archive(good, tmp_path / "big.pex", replace={"metadata/timestamp.json": big})
    reads: list[tuple[str, int | None]] = []
    real = ArchiveReader.read

    def spy(self: ArchiveReader, name: str, limit: int | None = None) -> bytes:
        reads.append((name, limit))
        return real(self, name, limit)

    monkeypatch.setattr(ArchiveReader, "read", spy)
    problems = _problems(bad, keys)
    assert any(f"more than the {_client.METADATA_LIMITS['timestamp']} allowed" in p for p in problems), problems
    assert all(limit is not None for name, limit in reads if name.startswith("metadata/")), reads


# ---------------------------------------------------------------- items 9, 10: FIFOs, devices, unbounded files


def test_fifos_and_devices_are_refused_everywhere(tmp_path: Path, keys: Path) -> None:
    fifo = tmp_path / "fifo.pex"
    os.mkfifo(fifo)
    calls: list[Callable[[], object]] = [
        lambda: verify(fifo),
        lambda: inspect_archive(fifo),
        lambda: diff(fifo, fifo),
        lambda: delta.is_delta(fifo),
        lambda: delta.read(fifo),
        lambda: delta.base_content(fifo),
        lambda: verify(mini(tmp_path, keys), root_file=Path("/dev/zero")),
        lambda: delta.base_content(Path("/dev/zero")),
        lambda: ArchiveReader(Path("/dev/null")),
    ]
    for call in calls:
        with pytest.raises(UsageError, match="not a regular file"):
            call()


def test_root_and_inventory_files_are_bounded(tmp_path: Path) -> None:
    big = tmp_path / "root.json"
    with big.open("wb") as f:
        f.truncate(_client.METADATA_LIMITS["root"] + 1)
    with pytest.raises(UsageError, match="more than the"):
        anchor_from_options(big, None)
    with pytest.raises(UsageError, match="more than the 10 a thing may have"):
        read_file(big, 10, "thing")


# ---------------------------------------------------------------- item 1: the zip bomb


def _bomb(tmp: Path, inflated: int) -> Path:
    """A tool zip whose __main__.py is ``inflated`` bytes of zeros (a few hundred KiB compressed)."""
    out = tmp / "bomb.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z, z.open("__main__.py", "w", force_zip64=False) as f:
        zero = bytes(CHUNK)
        for _ in range(inflated // CHUNK):
            f.write(zero)
    return out


def test_a_zip_bomb_costs_what_the_signed_tool_costs(tmp_path: Path, keys: Path) -> None:
    good = mini(tmp_path, keys)
    bomb = _bomb(tmp_path, 256 << 20)
    assert bomb.stat().st_size < 2 << 20
    bad = rewrite_archive(good, tmp_path / "bomb.pex", tool_zip=bomb.read_bytes())
    tracemalloc.start()
    try:
        problems = _problems(bad, keys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "tool zip member __main__.py: content differs from the signed tool code (modified)" in problems
    assert peak < 32 << 20, peak  # the whole 256 MiB was never held (it was never even inflated)


def test_read_zip_member_stops_at_the_declared_size(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path, 64 << 20)
    with bomb.open("rb") as f:
        (entry,), problems = check_zip(f.fileno(), _zip_layout(bomb))
        assert problems == []
        liar = ZipEntry(entry.name, entry.method, entry.crc, entry.compressed_size, 1000, entry.data_offset, entry.mode)
        with pytest.raises(FormatError, match="inflates beyond its declared 1000 bytes"):
            for chunk in read_zip_member(f.fileno(), liar):
                assert len(chunk) <= CHUNK
        with pytest.raises(FormatError, match="more than 4096"):
            list(read_zip_member(f.fileno(), entry, limit=4096))
        assert sum(len(c) for c in read_zip_member(f.fileno(), entry)) == 64 << 20
        listing = json.dumps([{"name": "__main__.py", "size": 10, "sha256": "0" * 64}]).encode()
        assert diagnose_tool(f.fileno(), [entry], listing) == [
            "tool zip member __main__.py: content differs from the signed tool code (modified)"
        ]


def _zip_layout(path: Path) -> Any:
    from chiron.archive.layout import Layout

    return Layout(path.stat().st_size, b"", (), 0, 0, 0, "pex", {})


# ---------------------------------------------------------------- the delta header


def _forged(tmp: Path, header: Any) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    out = tmp / "forged.delta"
    out.write_bytes(delta.HEAD.pack(delta.MAGIC, len(raw)) + raw)
    return out


def _header(**extent: Any) -> dict[str, Any]:
    e = {"name": "files/a", "length": 0, "sha256": "0" * 64, "carried": False, **extent}
    return {"format": delta.FORMAT, "name": "x", "version": "1", "size": 0, "sha256": "0" * 64, "extents": [e]}


@pytest.mark.parametrize(
    ("header", "expect"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
        (_header(name=ESC_NAME), "control or format character"),
        (_header(name="_archive/evil"), "reserved for the format's own regions"),
        (_header(name="metadata/\u00b2.root.json"), "only N.root.json"),
        (_header(length=True), "wrong types"),
        (_header(length=1.0), "wrong types"),
        (_header(carried=1), "wrong types"),
        (_header(sha256="zz"), "wrong types"),
        (_header(extra=1), "does not have exactly"),
        ({**_header(), "name": ["x"]}, "name is not a string"),
        ({**_header(), "size": -1}, "size is not a byte count"),
    ],
)
def test_delta_header_is_read_strictly(header: Any, expect: str, tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match=r"malformed delta header: .*" + expect.replace("[", r"\[")) as exc:
        delta.read(_forged(tmp_path, header))
    assert str(exc.value).isprintable()


def test_delta_header_extent_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_MEMBERS", 0)
    header = _header()
    header["extents"] = header["extents"] * 4
    with pytest.raises(VerificationError, match="more than an appliance can have"):
        delta.read(_forged(tmp_path, header))


def test_inventory_of_the_wrong_shape(tmp_path: Path) -> None:
    inv = tmp_path / "inv.json"
    for body in ('{"schema": "chiron.inventory/1", "content": [1]}', "{" + "[" * 100_000):
        inv.write_text(body)
        with pytest.raises(UsageError, match="inventory"):
            delta.base_content(inv)


# ---------------------------------------------------------------- item 7: the anchor


def test_anchor_values() -> None:
    assert isinstance(anchor_from_options(None, None), TrustOnFirstUse)
    assert anchor_from_options(None, "AB" * 32) == RootFingerprint("ab" * 32)
    with pytest.raises(UsageError, match="not 64 hexadecimal digits"):
        anchor_from_options(None, "12")
    with pytest.raises(UsageError, match="not both"):
        anchor_from_options(Path("x"), "ab" * 32)
    with pytest.raises(UsageError, match="no trust anchor") as exc:
        anchor_from_options(None, None, required=True)
    assert exc.value.hint is not None
    assert all(flag in exc.value.hint for flag in ("--root", "--root-sha256", "--trust-on-first-use"))
    assert isinstance(anchor_from_options(None, None, trust_on_first_use=True, required=True), TrustOnFirstUse)
    with pytest.raises(UsageError, match="without --root"):
        anchor_from_options(None, "ab" * 32, trust_on_first_use=True)


def test_verify_says_plainly_when_nothing_anchored_it(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = mini(tmp_path, keys)
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(app)])
    err = capsys.readouterr().err
    assert exc.value.code == 0 and "warning: NOT ANCHORED: nothing independent of this archive vouched for it" in err
    with pytest.raises(SystemExit):
        main(["verify", str(app), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["trust_anchor"] == "embedded root (trust on first use)" and report["warnings"][0].startswith(
        "NOT ANCHORED"
    )
    with pytest.raises(SystemExit):
        main(["verify", str(app), "--json", "--root", str(keys / "1.root.json")])
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_install_without_an_anchor_needs_trust_on_first_use(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = mini(tmp_path, keys)
    prefix = tmp_path / "prefix"
    with pytest.raises(SystemExit) as exc:
        main(["install", str(app), "--prefix", str(prefix)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no trust anchor" in err and "--trust-on-first-use" in err, err
    assert not prefix.exists()


# ---------------------------------------------------------------- the bounded JSON parser


def test_parse_json_refuses_deep_nesting() -> None:
    with pytest.raises(ValueError, match="x: JSON nested too deeply"):
        parse_json(b"[" * 100_000, "x")
    with pytest.raises(ValueError, match="x: not valid JSON"):
        parse_json(b"{", "x")
    assert parse_json(io.BytesIO(b"[1]").read(), "x") == [1]
