"""Every --json output validates against its published JSON Schema (docs/schemas/*.schema.json).

Each schema file is tested by ``test_output_matches_schema[<file>]``, which asks for the fixture
``out_<name>`` (``out_host_result`` for host-result.schema.json): the outputs of real commands run
in-process through ``chiron.cli.main``. A schema file without such a fixture fails, and so does an
output whose "schema" field is not the file's const.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from chiron.archive.reader import read_layout
from chiron.cli import app as cli_app
from chiron.cli import main

from conftest import REPO, do_build, start_registry
from helpers import ENV_311, ENV_312, LocalIndex, make_wheel, write_spec

SCHEMA_DIR = REPO / "docs" / "schemas"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.schema.json"))
ID_BASE = "https://chiron.invalid/schemas/"

Output = tuple[str, int, dict[str, Any]]  # (what was run, exit code, the parsed stdout)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _const(schema: dict[str, Any]) -> str:
    return str(schema["properties"]["schema"]["const"])


SCHEMAS = {_const(_load(p)): p for p in SCHEMA_FILES}


@pytest.fixture(autouse=True)
def _fresh_cli_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # cli_app.state is module-global: a --json run must not leak into the next one.
    cli_app.state.update({"verbose": False, "json": False, "log_format": "human"})


@pytest.fixture(autouse=True)
def _cache_dir(monkeypatch: pytest.MonkeyPatch, session_cache: Path) -> None:
    # lock (and build without --cache-dir) use $CHIRON_CACHE_DIR: never the user's ~/.cache.
    monkeypatch.setenv("CHIRON_CACHE_DIR", str(session_cache))


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Output:
    """Run one command with --json in-process; its whole stdout must be one JSON document."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr().out
    try:
        doc = json.loads(out)
    except ValueError:
        pytest.fail(f"chiron {' '.join(argv)}: stdout is not one JSON document: {out!r}")
    return " ".join(argv), int(exc.value.code or 0), doc


def _errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    found = Draft202012Validator(schema).iter_errors(doc)
    return sorted(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found)


def _install(capsys: pytest.CaptureFixture[str], archive: Path, prefix: Path, keys: Path) -> Output:
    return run(
        capsys, ["install", str(archive), "--prefix", str(prefix), "--root", str(keys / "1.root.json"), "--json"]
    )


def _fake_txn(prefix: Path, rid: str) -> None:
    """An interrupted upgrade to ``rid`` that never switched (what a crash before the switch leaves)."""
    state = json.loads((prefix / "state" / "state.json").read_text())
    release = {**state["releases"][state["current"]], "version": "9.9.9"}
    txn = {
        "op": "upgrade",
        "id": rid,
        "release": release,
        "reference_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "keep_releases": 2,
    }
    (prefix / "state" / "txn.json").write_text(json.dumps(txn))
    (prefix / "releases" / rid).mkdir()


# ---------------------------------------------------------------- the schema files themselves


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_file_is_a_valid_schema(path: Path) -> None:
    schema = _load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    const = _const(schema)
    assert schema["$id"] == ID_BASE + const
    assert path.name == const.removeprefix("chiron.").split("/")[0] + ".schema.json"
    assert schema["title"] and schema["description"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert "schema" in schema["required"]


def test_every_schema_id_in_the_code_has_a_file() -> None:
    """A new output (a "chiron.NAME/N" literal in src/chiron) needs a schema file; chiron.host-state/1 is
    the host's state.json, not command output."""
    pattern = re.compile(r'"(chiron\.[a-z][a-z-]*/[0-9]+)"')
    in_code = {m for f in (REPO / "src" / "chiron").rglob("*.py") for m in pattern.findall(f.read_text())}
    assert "chiron.verify/1" in in_code
    assert sorted(in_code - {"chiron.host-state/1"}) == sorted(SCHEMAS)


def test_readme_lists_every_schema() -> None:
    readme = (SCHEMA_DIR / "README.md").read_text()
    for const, path in SCHEMAS.items():
        assert f"`{const}`" in readme and f"({path.name})" in readme, const


# ---------------------------------------------------------------- every output against its schema


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_output_matches_schema(path: Path, request: pytest.FixtureRequest) -> None:
    schema = _load(path)
    const = _const(schema)
    fixture = "out_" + path.name.removesuffix(".schema.json").replace("-", "_")
    try:
        outputs: list[Output] = request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        pytest.fail(f"{path.name}: no fixture {fixture} runs a command that prints {const}")
    assert outputs
    for what, _code, doc in outputs:
        assert doc.get("schema") == const, f"chiron {what}"
        problems = _errors(schema, doc)
        assert not problems, f"chiron {what}:\n" + "\n".join(problems)
    # The schema is strict where the output is fixed: an undocumented or a missing field is caught.
    _what, _code, doc = outputs[0]
    assert _errors(schema, {**doc, "undocumented": 1})
    for key in schema["required"]:
        assert _errors(schema, {k: v for k, v in doc.items() if k != key}), f"{key} is not required"


@pytest.fixture()
def out_verify(
    capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, other_keys: Path, tmp_path: Path
) -> list[Output]:
    root = keys / "1.root.json"
    outs = [
        run(capsys, ["verify", str(appliance), "--root", str(root), "--json"]),
        run(
            capsys, ["verify", str(appliance), "--root-sha256", hashlib.sha256(root.read_bytes()).hexdigest(), "--json"]
        ),
        run(capsys, ["verify", str(appliance), "--json"]),
    ]
    assert [(code, doc["ok"]) for _w, code, doc in outs] == [(0, True)] * 3
    assert [doc["trust_anchor"] for _w, _c, doc in outs] == [
        "--root file",
        "--root-sha256",
        "embedded root (trust on first use)",
    ]
    assert outs[2][2]["notices"]  # trust on first use is pointed out
    # Signed by keys the anchor does not trust: stops before the targets are trusted.
    foreign = run(capsys, ["verify", str(appliance), "--root", str(other_keys / "1.root.json"), "--json"])
    assert foreign[1] == 1 and not foreign[2]["ok"] and foreign[2]["roles"] == {}
    # A modified wheel: the TUF chain is trusted, the bytes are not.
    tampered = tmp_path / "tampered.pex"
    shutil.copyfile(appliance, tampered)
    wheel = next(m for m in read_layout(tampered).members if m.name.startswith("wheels/"))
    with tampered.open("r+b") as f:
        f.seek(wheel.offset + wheel.length // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    modified = run(capsys, ["verify", str(tampered), "--root", str(root), "--json"])
    # One volume of it, verified alone (chiron split): the report says which volume of what.
    volumes = _volumes(capsys, appliance, tmp_path / "volumes")
    volume = run(capsys, ["verify", str(volumes[-1]), "--root", str(root), "--json"])
    assert volume[1] == 0 and volume[2]["ok"] and volume[2]["volume"]["number"] == len(volumes)
    assert outs[0][2]["volume"] is None
    assert (
        modified[1] == 1
        and not modified[2]["ok"]
        and set(modified[2]["roles"])
        == {
            "root",
            "timestamp",
            "snapshot",
            "targets",
        }
    )
    return [*outs, foreign, modified, volume]


@pytest.fixture()
def out_inspect(capsys: pytest.CaptureFixture[str], appliance: Path) -> list[Output]:
    out = run(capsys, ["inspect", str(appliance), "--json"])
    assert out[1] == 0 and out[2]["verified"] is False
    return [out]


@pytest.fixture()
def out_build(
    capsys: pytest.CaptureFixture[str], good_spec: Path, tool_wheels: Path, session_cache: Path, tmp_path: Path
) -> list[Output]:
    dest = tmp_path / "built.pex"
    out = run(
        capsys,
        [
            "build",
            str(good_spec),
            "-o",
            str(dest),
            "--tool-wheels",
            str(tool_wheels),
            "--cache-dir",
            str(session_cache),
            "--json",
        ],
    )
    assert out[1] == 0 and out[2]["output"] == str(dest) and dest.is_file()
    return [out]


@pytest.fixture()
def out_lock(capsys: pytest.CaptureFixture[str], keys: Path, index: LocalIndex, tmp_path: Path) -> list[Output]:
    spec = write_spec(
        tmp_path / "spec",
        keys=keys,
        index_url=index.url,
        requirements=["alpha==1.0", "gamma==2.0"],
        environments=ENV_311 + ENV_312,
    )
    lock = tmp_path / "pylock.toml"
    out = run(capsys, ["lock", str(spec), "-o", str(lock), "--json"])
    assert out[1] == 0
    assert out[2]["written"] == [str(lock), *(str(tmp_path / f"requirements-{e}.txt") for e in ("cp311", "cp312"))]
    assert out[2]["packages"] == 3  # alpha, beta, gamma
    return [out]


@pytest.fixture()
def out_keys_init(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> list[Output]:
    out = run(capsys, ["keys", "init", str(tmp_path / "keys"), "--root-expires", "30d", "--json"])
    assert out[1] == 0
    assert out[2]["root_fingerprint"] == hashlib.sha256((tmp_path / "keys" / "1.root.json").read_bytes()).hexdigest()
    return [out]


@pytest.fixture(scope="module")
def newer_appliance(
    tmp_path_factory: pytest.TempPathFactory, keys: Path, index: LocalIndex, tool_wheels: Path, session_cache: Path
) -> Path:
    """The session appliance's successor (1.1.0): built later, so its TUF metadata versions are higher."""
    base = tmp_path_factory.mktemp("newer")
    spec = write_spec(
        base / "spec",
        keys=keys,
        index_url=index.url,
        requirements=["alpha==1.0", "gamma==2.0"],
        environments=ENV_311 + ENV_312,
        version="1.1.0",
    )
    out = base / "chiron-1.1.0.pex"
    do_build(spec, out, tool_wheels, session_cache, epoch=int(time.time()) + 5)
    return out


@pytest.fixture()
def out_host_result(
    capsys: pytest.CaptureFixture[str], appliance: Path, newer_appliance: Path, keys: Path, tmp_path: Path
) -> list[Output]:
    prefix = tmp_path / "p"
    installed = _install(capsys, appliance, prefix, keys)
    upgraded = run(capsys, ["upgrade", str(newer_appliance), "--prefix", str(prefix), "--json"])
    rolled_back = run(capsys, ["rollback", "--prefix", str(prefix), "--json"])
    assert [(o[1], o[2]["op"], o[2]["appliance"]["version"]) for o in (installed, upgraded, rolled_back)] == [
        (0, "install", "1.0.0"),
        (0, "upgrade", "1.1.0"),
        (0, "rollback", "1.0.0"),
    ]
    assert upgraded[2]["previous"] == installed[2]["release"] == rolled_back[2]["release"]
    assert rolled_back[2]["previous"] == upgraded[2]["release"]
    return [installed, upgraded, rolled_back]


@pytest.fixture()
def out_commit(
    capsys: pytest.CaptureFixture[str], appliance: Path, newer_appliance: Path, keys: Path, tmp_path: Path
) -> list[Output]:
    """upgrade --trial-until leaves the release on trial (host-result and status show it); commit ends it."""
    prefix = tmp_path / "p"
    _install(capsys, appliance, prefix, keys)
    upgraded = run(capsys, ["upgrade", str(newer_appliance), "--prefix", str(prefix), "--trial-until", "10m", "--json"])
    assert upgraded[1] == 0 and upgraded[2]["trial"]["phase"] == "on-trial" and upgraded[2]["trial"]["external"]
    on_trial = run(capsys, ["status", "--prefix", str(prefix), "--json"])
    assert on_trial[2]["trial"]["release"] == upgraded[2]["release"]
    for output, schema in ((upgraded, "chiron.host-result/1"), (on_trial, "chiron.status/1")):
        assert _errors(_load(SCHEMAS[schema]), output[2]) == []
    committed = run(capsys, ["commit", "--prefix", str(prefix), "--json"])
    assert committed[1] == 0 and committed[2]["release"] == upgraded[2]["release"]
    after = run(capsys, ["status", "--prefix", str(prefix), "--json"])
    assert after[2]["trial"]["phase"] == "committed" and _errors(_load(SCHEMAS["chiron.status/1"]), after[2]) == []
    again = run(capsys, ["commit", "--prefix", str(prefix), "--json"])
    assert again[1] == 2 and again[2]["schema"] == "chiron.error/1"
    return [committed]


@pytest.fixture()
def installed(capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, tmp_path: Path) -> Path:
    prefix = tmp_path / "installed"
    assert _install(capsys, appliance, prefix, keys)[1] == 0
    return prefix


@pytest.fixture()
def out_status(capsys: pytest.CaptureFixture[str], installed: Path) -> list[Output]:
    argv = ["status", "--prefix", str(installed), "--json"]
    plain = run(capsys, argv)
    assert plain[1] == 0 and plain[2]["current"]["version"] == "1.0.0" and plain[2]["pending_transaction"] is None
    _fake_txn(installed, "demo-9.9.9-1")
    pending = run(capsys, argv)
    assert pending[1] == 0 and pending[2]["pending_transaction"]["id"] == "demo-9.9.9-1"
    assert run(capsys, ["recover", "--prefix", str(installed), "--json"])[1] == 0
    recovered = run(capsys, argv)
    assert recovered[2]["last_operations"][-1]["op"] == "recover"
    return [plain, pending, recovered]


@pytest.fixture()
def out_recover(capsys: pytest.CaptureFixture[str], installed: Path) -> list[Output]:
    argv = ["recover", "--prefix", str(installed), "--json"]
    nothing = run(capsys, argv)
    assert nothing[1] == 0 and nothing[2]["outcome"] is None
    _fake_txn(installed, "demo-9.9.9-1")
    undone = run(capsys, argv)
    assert undone[1] == 0 and undone[2]["outcome"].startswith("undid interrupted upgrade of demo-9.9.9-1")
    return [nothing, undone]


@pytest.fixture()
def out_images(capsys: pytest.CaptureFixture[str], installed: Path) -> list[Output]:
    loaded = run(capsys, ["images", "load", "--prefix", str(installed), "--json"])
    assert loaded[1] == 0 and loaded[2]["op"] == "load" and loaded[2]["images"] == []
    return [loaded]


@pytest.fixture()
def out_audit_verify(capsys: pytest.CaptureFixture[str], installed: Path, tmp_path: Path) -> list[Output]:
    intact = run(capsys, ["audit", "verify", "--prefix", str(installed), "--json"])
    assert intact[1] == 0 and intact[2]["ok"] and intact[2]["entries"] == 1
    log = installed / "state" / "audit.jsonl"
    log.write_text(log.read_text().replace('"result": "ok"', '"result": "failed"'))
    edited = run(capsys, ["audit", "verify", "--prefix", str(installed), "--json"])
    assert edited[1] == 1 and not edited[2]["ok"]
    missing = run(capsys, ["audit", "verify", "--prefix", str(tmp_path / "empty"), "--json"])
    assert missing[1] == 1 and "missing" in missing[2]["problems"][0]
    return [intact, edited, missing]


def _not_an_appliance(tmp_path: Path) -> Path:
    bad = tmp_path / "nope.pex"
    bad.write_bytes(b"#!/usr/bin/env python3\nnot an appliance\n")
    return bad


@pytest.fixture()
def out_doctor(capsys: pytest.CaptureFixture[str], appliance: Path, installed: Path, tmp_path: Path) -> list[Output]:
    outs = [
        run(capsys, ["doctor", "--json"]),
        run(capsys, ["doctor", str(appliance), "--prefix", str(tmp_path / "fresh"), "--json"]),
        run(capsys, ["doctor", str(appliance), "--prefix", str(installed), "--json"]),
        run(capsys, ["doctor", str(_not_an_appliance(tmp_path)), "--json"]),
    ]
    for what, code, doc in outs:
        assert code == (0 if doc["ok"] else 3), f"chiron {what}"
    # A file that is not an appliance is a failed check (a missing one is a usage error: chiron.error/1).
    assert outs[-1][2]["ok"] is False
    return outs


@pytest.fixture()
def out_error(
    capsys: pytest.CaptureFixture[str],
    appliance: Path,
    installed: Path,
    keys: Path,
    upstream: LocalIndex,
    tool_wheels: Path,
    tmp_path: Path,
) -> list[Output]:
    garbage = tmp_path / "garbage.pex"
    garbage.write_bytes(b"not an appliance" * 64)
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "alpha", "1.0")
    lying = LocalIndex(wheels)
    lying.override["alpha-1.0-py3-none-any.whl"] = b"other bytes than the index's sha256 says"
    try:
        spec = write_spec(tmp_path / "spec", keys=keys, index_url=lying.url, requirements=["alpha==1.0"])
        outs = [
            (2, run(capsys, ["verify", str(tmp_path / "nope.pex"), "--json"])),
            (1, run(capsys, ["inspect", str(garbage), "--json"])),
            (2, run(capsys, ["status", "--prefix", str(tmp_path / "empty"), "--json"])),
            (2, run(capsys, ["upgrade", str(appliance), "--prefix", str(tmp_path / "empty"), "--json"])),
            (4, _install(capsys, appliance, installed, keys)),
            (4, run(capsys, ["rollback", "--prefix", str(installed), "--json"])),
            (3, run(capsys, ["lock", str(spec), "-o", str(tmp_path / "pylock.toml"), "--json"])),
            # An OSError on a file the user named (here after the command: global options go anywhere).
            (2, run(capsys, ["verify", str(appliance), "--json", "--trace-file", str(tmp_path / "no" / "t.jsonl")])),
        ]
    finally:
        lying.close()
    # A policy violation (policy.toml beside the spec): refused before anything is built, with details.
    denied = write_spec(tmp_path / "denied", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])
    (denied.parent / "policy.toml").write_text('[packages]\ndeny = ["beta"]\n')
    refresh = ["mirror", "refresh", str(denied), "--store", str(tmp_path / "store"), "--tool-wheels", str(tool_wheels)]
    outs.append((4, run(capsys, [*refresh, "--json"])))
    for want, (what, code, doc) in outs:
        assert code == want == doc.get("exit_code"), f"chiron {what}: exit {code}, {doc}"
    assert outs[0][1][2]["error"] == f"{tmp_path / 'nope.pex'}: no such file"
    assert outs[-1][1][2]["details"] == [
        {"package": "beta", "version": "1.0", "rule": "packages.deny", "detail": "matches 'beta'"}
    ]
    return [out for _want, out in outs]


@pytest.fixture()
def out_root_status(capsys: pytest.CaptureFixture[str], keys: Path, other_keys: Path, tmp_path: Path) -> list[Output]:
    v1 = run(capsys, ["keys", "status", str(keys / "1.root.json"), "--json"])
    assert v1[1] == 0 and v1[2]["complete"] and list(v1[2]["thresholds"]) == ["root v1"]
    # A ceremony: root v2 with another timestamp key, unsigned, then one signature by the (unchanged) root key.
    root_dir = tmp_path / "roots"
    root_dir.mkdir()
    shutil.copyfile(keys / "1.root.json", root_dir / "1.root.json")
    with pytest.raises(SystemExit) as exc:
        main(["keys", "rotate", "timestamp", "--root-dir", str(root_dir), "--add", str(other_keys / "timestamp.pem")])
    assert exc.value.code in (0, None)
    v2 = root_dir / "2.root.json"
    unsigned = run(capsys, ["keys", "status", str(v2), "--json"])
    assert unsigned[1] == 1 and not unsigned[2]["complete"]
    assert unsigned[2]["thresholds"] == {
        "root v2": {"signed": 0, "threshold": 1},
        "root v1": {"signed": 0, "threshold": 1},
    }
    signed = run(capsys, ["sign", str(v2), "--key", f"file2:{keys / 'root.pem'}", "--json"])
    assert signed[1] == 0 and signed[2]["complete"] and signed[2]["version"] == 2
    return [v1, unsigned, signed]


@pytest.fixture()
def out_extract(capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, tmp_path: Path) -> list[Output]:
    root = keys / "1.root.json"
    checked = run(capsys, ["extract", str(appliance), "-o", str(tmp_path / "v"), "--root", str(root), "--json"])
    unchecked = run(capsys, ["extract", str(appliance), "-o", str(tmp_path / "u"), "--unverified", "--json"])
    assert (checked[1], checked[2]["verified"], unchecked[1], unchecked[2]["verified"]) == (0, True, 0, False)
    assert checked[2]["files"] == unchecked[2]["files"]
    assert (tmp_path / "v" / "spec" / "appliance.toml").read_bytes() == (
        tmp_path / "u/spec/appliance.toml"
    ).read_bytes()
    return [checked, unchecked]


@pytest.fixture()
def out_report(capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, tmp_path: Path) -> list[Output]:
    root = keys / "1.root.json"
    checked = run(
        capsys,
        [
            "report",
            str(appliance),
            "--against",
            str(appliance),
            "-o",
            str(tmp_path / "r.html"),
            "--root",
            str(root),
            "--json",
        ],
    )
    unchecked = run(capsys, ["report", str(appliance), "-o", str(tmp_path / "u.html"), "--unverified", "--json"])
    assert (checked[1], checked[2]["verified"], checked[2]["changes"]) == (0, True, True)
    assert (unchecked[1], unchecked[2]["verified"], unchecked[2]["changes"]) == (0, False, False)
    assert b"NOT verified" in (tmp_path / "u.html").read_bytes()
    return [checked, unchecked]


def test_keys_init_error_is_json(capsys: pytest.CaptureFixture[str], keys: Path) -> None:
    _what, code, doc = run(capsys, ["keys", "init", str(keys), "--json"])
    assert code == 2 and doc["schema"] == "chiron.error/1"


@pytest.fixture()
def out_rebuild(capsys: pytest.CaptureFixture[str], appliance: Path, good_spec: Path, tmp_path: Path) -> list[Output]:
    same = run(
        capsys,
        [
            "rebuild",
            str(appliance),
            "-o",
            str(tmp_path / "r.pex"),
            "--base",
            str(good_spec.parent),
            "--check",
            "--json",
        ],
    )
    assert same[1] == 0 and same[2]["identical"] is True
    return [same]


@pytest.fixture()
def out_diff(capsys: pytest.CaptureFixture[str], appliance: Path) -> list[Output]:
    same = run(capsys, ["diff", str(appliance), str(appliance), "--json"])
    assert same[1] == 0 and same[2]["packages"]["changed"] == []
    return [same]


# ---------------------------------------------------------------- the mirror store, deltas and inventories

MIRROR_EPOCH = int(time.time()) - 3600  # recent: the metadata must still be valid when it is verified


@pytest.fixture()
def mirror_spec(tmp_path: Path, keys: Path, upstream: LocalIndex) -> Path:
    return write_spec(tmp_path / "mirror-spec", keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])


def _mirror_refresh(
    capsys: pytest.CaptureFixture[str], store: Path, tool_wheels: Path, epoch: int, *extra: str
) -> Output:
    return run(
        capsys,
        [
            "mirror",
            "refresh",
            *extra,
            "--store",
            str(store),
            "--tool-wheels",
            str(tool_wheels),
            "--source-date-epoch",
            str(epoch),
            "--json",
        ],
    )


@pytest.fixture()
def refreshed(
    capsys: pytest.CaptureFixture[str],
    seeded: Any,
    tool_wheels: Path,
    mirror_spec: Path,
    tmp_path: Path,
) -> tuple[Path, Output]:
    """A store after its first refresh. Its tool zips are copied from the session cache, which the
    session appliance filled (building a tool zip costs ~10 s)."""
    store = seeded(tmp_path / "store")
    first = _mirror_refresh(capsys, store, tool_wheels, MIRROR_EPOCH, str(mirror_spec))
    assert first[1] == 0 and first[2]["changed"] and first[2]["metadata_version"] == MIRROR_EPOCH
    assert first[2]["downloaded"] == 2 and first[2]["changelog"] is None  # alpha and beta; nothing to compare with
    return store, first


@pytest.fixture()
def out_mirror_refresh(
    capsys: pytest.CaptureFixture[str], refreshed: tuple[Path, Output], upstream: LocalIndex, tool_wheels: Path
) -> list[Output]:
    store, first = refreshed
    same = _mirror_refresh(capsys, store, tool_wheels, MIRROR_EPOCH + 60)  # the store remembers its spec
    assert same[1] == 0 and not same[2]["changed"] and same[2]["downloaded"] == 0
    assert same[2]["appliance"] == first[2]["appliance"] and same[2]["size"] is None
    make_wheel(upstream.directory, "beta", "1.1")
    newer = _mirror_refresh(capsys, store, tool_wheels, MIRROR_EPOCH + 120, "--delta-from", first[2]["appliance"])
    assert newer[1] == 0 and newer[2]["changed"] and newer[2]["metadata_version"] == MIRROR_EPOCH + 1
    assert newer[2]["delta"] == str(Path(newer[2]["appliance"]).with_suffix(".delta"))
    assert 0 < newer[2]["delta_size"] < newer[2]["size"]
    changelog = newer[2]["changelog"]
    assert not _errors(_load(SCHEMA_DIR / "diff.schema.json"), changelog)  # the changelog is a chiron.diff/1
    assert [(p["name"], p["to_version"]) for p in changelog["packages"]["changed"]] == [("beta", "1.1")]
    return [first, same, newer]


@pytest.fixture()
def restored(
    capsys: pytest.CaptureFixture[str], appliance: Path, good_spec: Path, keys: Path, tmp_path: Path
) -> tuple[Path, Output]:
    """A store restored from the session appliance, with its spec and a trusted root."""
    store = tmp_path / "restored"
    argv = ["mirror", "restore", str(appliance), "--store", str(store), "--spec", str(good_spec)]
    out = run(capsys, [*argv, "--root", str(keys / "1.root.json"), "--json"])
    assert out[1] == 0 and out[2]["spec"] == str(good_spec) and out[2]["notices"] == []
    assert out[2]["next_version"] == out[2]["metadata_version"] + 1 and out[2]["wheels"] > 0
    return store, out


@pytest.fixture()
def out_mirror_restore(
    capsys: pytest.CaptureFixture[str], restored: tuple[Path, Output], appliance: Path, tmp_path: Path
) -> list[Output]:
    _store, with_spec = restored
    # Without --spec the appliance's own copy is written into the store; without --root, trust on first use.
    own = run(capsys, ["mirror", "restore", str(appliance), "--store", str(tmp_path / "own"), "--json"])
    assert own[1] == 0 and own[2]["spec"] == str(tmp_path / "own" / "spec" / "appliance.toml")
    assert own[2]["notices"] and own[2]["keys"] == with_spec[2]["keys"]
    return [with_spec, own]


@pytest.fixture()
def out_mirror_status(
    capsys: pytest.CaptureFixture[str], refreshed: tuple[Path, Output], restored: tuple[Path, Output]
) -> list[Output]:
    built, rest = (run(capsys, ["mirror", "status", "--store", str(s), "--json"]) for s, _out in (refreshed, restored))
    assert built[1] == 0 and built[2]["versions"] == [MIRROR_EPOCH] and built[2]["artifacts"] == 2
    assert built[2]["latest"]["file"] == str(Path(refreshed[1][2]["appliance"]).relative_to(refreshed[0]))
    assert rest[1] == 0 and rest[2]["versions"] == [restored[1][2]["metadata_version"]]
    assert "restored_from" in rest[2]["latest"] and "restored_from" not in built[2]["latest"]
    return [built, rest]


@pytest.fixture()
def out_mirror_prune(
    capsys: pytest.CaptureFixture[str], refreshed: tuple[Path, Output], upstream: LocalIndex, tool_wheels: Path
) -> list[Output]:
    store, first = refreshed
    make_wheel(upstream.directory, "beta", "1.1")
    assert _mirror_refresh(capsys, store, tool_wheels, MIRROR_EPOCH + 60)[2]["changed"]
    pruned = run(capsys, ["mirror", "prune", "--store", str(store), "--keep", "1", "--json"])
    assert pruned[1] == 0 and pruned[2]["pruned"] == [MIRROR_EPOCH] and pruned[2]["kept"] == [MIRROR_EPOCH + 1]
    assert pruned[2]["files_removed"] == 1 and not Path(first[2]["appliance"]).exists()  # beta 1.0's wheel
    again = run(capsys, ["mirror", "prune", "--store", str(store), "--keep", "1", "--json"])
    assert again[2]["pruned"] == [] and again[2]["files_removed"] == 0
    return [pruned, again]


def _inventory_file(capsys: pytest.CaptureFixture[str], prefix: Path, dest: Path) -> Output:
    """``chiron inventory -o FILE``: it prints one line on stdout; the output is the file."""
    capsys.readouterr()
    argv = ["inventory", "--prefix", str(prefix), "-o", str(dest)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert capsys.readouterr().out.startswith(f"wrote {dest}: ")
    return " ".join(argv), int(exc.value.code or 0), json.loads(dest.read_text())


@pytest.fixture()
def out_delta(
    capsys: pytest.CaptureFixture[str], appliance: Path, newer_appliance: Path, installed: Path, tmp_path: Path
) -> list[Output]:
    size = newer_appliance.stat().st_size
    from_appliance = run(
        capsys, ["delta", str(appliance), str(newer_appliance), "-o", str(tmp_path / "a.delta"), "--json"]
    )
    inventory = tmp_path / "inventory.json"
    assert _inventory_file(capsys, installed, inventory)[1] == 0
    from_inventory = run(
        capsys, ["delta", str(inventory), str(newer_appliance), "-o", str(tmp_path / "i.delta"), "--json"]
    )
    for out, name in ((from_appliance, "a.delta"), (from_inventory, "i.delta")):
        assert out[1] == 0 and out[2]["output"] == str(tmp_path / name)
        assert out[2]["size"] == (tmp_path / name).stat().st_size < size
        assert out[2]["carried_bytes"] + out[2]["reused_bytes"] == size and out[2]["reused_bytes"] > 0
    return [from_appliance, from_inventory]


def _volumes(capsys: pytest.CaptureFixture[str], appliance: Path, out: Path, *extra: str) -> list[Path]:
    """``chiron split`` of the appliance into two volumes (the tool zip, one signed unit, alone in one)."""
    size = str(appliance.stat().st_size - 1000)
    made = run(capsys, ["split", str(appliance), "--size", size, "-o", str(out), "--json", *extra])
    assert made[1] == 0, made
    return [Path(v["file"]) for v in made[2]["volumes"]]


@pytest.fixture()
def out_split(
    capsys: pytest.CaptureFixture[str], appliance: Path, newer_appliance: Path, tmp_path: Path
) -> list[Output]:
    size = str(appliance.stat().st_size - 1000)
    made = run(capsys, ["split", str(appliance), "--size", size, "-o", str(tmp_path / "a"), "--json"])
    assert made[1] == 0 and len(made[2]["volumes"]) == 2 and made[2]["kind"] == "appliance"
    assert made[2]["signature"] == str(tmp_path / "a" / "demo-1.0.0.sig")
    delta = tmp_path / "b.delta"
    assert run(capsys, ["delta", str(appliance), str(newer_appliance), "-o", str(delta), "--json"])[1] == 0
    of_delta = run(capsys, ["split", str(delta), "--size", "1M", "-o", str(tmp_path / "d"), "--json"])
    assert of_delta[1] == 0 and of_delta[2]["kind"] == "delta" and of_delta[2]["signature"] is None
    return [made, of_delta]


@pytest.fixture()
def out_join(capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, tmp_path: Path) -> list[Output]:
    _volumes(capsys, appliance, tmp_path / "v")
    out = tmp_path / "joined.pex"
    anchored = run(capsys, ["join", str(tmp_path / "v"), "-o", str(out), "--root", str(keys / "1.root.json"), "--json"])
    assert anchored[1] == 0 and anchored[2]["output"] == str(out) and out.read_bytes() == appliance.read_bytes()
    unanchored = run(capsys, ["join", str(tmp_path / "v"), "-o", str(tmp_path / "j2.pex"), "--json"])
    assert unanchored[1] == 0 and unanchored[2]["warnings"]  # NOT ANCHORED
    return [anchored, unanchored]


@pytest.fixture()
def out_receive(capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, tmp_path: Path) -> list[Output]:
    root = str(keys / "1.root.json")
    vols = _volumes(capsys, appliance, tmp_path / "v")
    whole = run(capsys, ["receive", str(appliance), "--to", str(tmp_path / "a"), "--root", root, "--json"])
    assert whole[1] == 0 and whole[2]["complete"] and whole[2]["volumes"] is None
    first = run(capsys, ["receive", str(vols[0]), "--to", str(tmp_path / "b"), "--root", root, "--json"])
    assert first[1] == 0 and not first[2]["complete"] and first[2]["volumes"]["missing"] == [2]
    rest = run(capsys, ["receive", str(vols[1]), "--to", str(tmp_path / "b"), "--root", root, "--json"])
    assert rest[1] == 0 and rest[2]["complete"] and rest[2]["resumed_bytes"] == first[2]["received_bytes"] > 0
    return [whole, first, rest]


@pytest.fixture()
def out_inventory(
    capsys: pytest.CaptureFixture[str], installed: Path, newer_appliance: Path, tmp_path: Path
) -> list[Output]:
    printed = run(capsys, ["inventory", "--prefix", str(installed)])  # JSON on stdout without --json
    assert printed[1] == 0 and [r["version"] for r in printed[2]["releases"]] == ["1.0.0"]
    assert run(capsys, ["upgrade", str(newer_appliance), "--prefix", str(installed), "--json"])[1] == 0
    written = _inventory_file(capsys, installed, tmp_path / "inventory.json")
    assert written[1] == 0 and [r["version"] for r in written[2]["releases"]] == ["1.0.0", "1.1.0"]
    assert set(printed[2]["content"]) < set(written[2]["content"])
    return [printed, written]


# ---------------------------------------------------------------- chiron serve and its clients


@pytest.fixture()
def out_receipt(capsys: pytest.CaptureFixture[str], installed: Path, tmp_path: Path) -> list[Output]:
    first = run(
        capsys, ["receipt", "--prefix", str(installed), "-o", str(tmp_path / "1.json"), "--host-id", "web-01", "--json"]
    )
    assert first[1] == 0 and json.loads((tmp_path / "1.json").read_text()) == first[2]
    again = run(capsys, ["receipt", "--prefix", str(installed), "-o", str(tmp_path / "2.json"), "--json"])
    assert (
        again[1] == 0 and again[2]["seq"] == 2 and again[2]["key"] == first[2]["key"] and again[2]["host"] == "web-01"
    )
    return [first, again]


@pytest.fixture()
def oci_target(tmp_path: Path):  # type: ignore[no-untyped-def]
    registry = start_registry(tmp_path / "registry")
    yield f"oci://{registry.address}/schemas/demo"
    registry.stop()


@pytest.fixture()
def out_publish(capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, oci_target: str) -> list[Output]:
    first = run(capsys, ["publish", str(appliance), oci_target, "--tag", "latest", "--json"])
    again = run(
        capsys, ["publish", str(appliance), f"{oci_target}:stable", "--root", str(keys / "1.root.json"), "--json"]
    )
    assert first[1] == again[1] == 0
    assert first[2]["tags"] == ["1.0.0", "latest"] and first[2]["uploaded_blobs"] == first[2]["blobs"]
    assert again[2]["uploaded_blobs"] == 0 and again[2]["digest"] == first[2]["digest"]  # same appliance, same manifest
    return [first, again]


@pytest.fixture()
def out_serve_token(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> list[Output]:
    db = str(tmp_path / "serve.db")
    plain = run(capsys, ["serve", "token", "add", "--db", db, "--name", "ci", "--scope", "read", "--json"])
    expiring = run(
        capsys,
        [
            "serve",
            "token",
            "add",
            "--db",
            db,
            "--name",
            "ops",
            "--scope",
            "admin",
            "--scope",
            "report",
            "--expires",
            "30d",
            "--json",
        ],
    )
    assert plain[1] == expiring[1] == 0 and plain[2]["expires"] is None and expiring[2]["scopes"] == ["report", "admin"]
    return [plain, expiring]


@pytest.fixture()
def out_serve_tokens(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> list[Output]:
    from chiron.service.db import Database

    db = tmp_path / "serve.db"
    empty = run(capsys, ["serve", "token", "list", "--db", str(db), "--json"])
    made = [
        run(capsys, ["serve", "token", "add", "--db", str(db), "--name", n, "--scope", "read", "--json"])[2]
        for n in "ab"
    ]
    assert Database(db).revoke_token(made[0]["id"])
    listed = run(capsys, ["serve", "token", "list", "--db", str(db), "--json"])
    assert empty[2]["tokens"] == [] and [t["revoked"] is not None for t in listed[2]["tokens"]] == [True, False]
    assert not any(t["token"] in json.dumps(listed[2]) for t in made)  # never shown again
    return [empty, listed]


@pytest.fixture()
def out_fleet(capsys: pytest.CaptureFixture[str], installed: Path, tmp_path: Path) -> list[Output]:
    from chiron.service import site
    from chiron.service.db import Database

    db = tmp_path / "serve.db"
    empty = run(capsys, ["serve", "hosts", "list", "--db", str(db), "--json"])
    receipt = run(capsys, ["receipt", "--prefix", str(installed), "-o", str(tmp_path / "r.json"), "--json"])[2]
    site.approve(Database(db), receipt["host"], receipt["key_sha256"], "test")
    site.accept_receipt(Database(db), receipt, "media", {})
    one = run(capsys, ["serve", "hosts", "list", "--db", str(db), "--json"])
    assert empty[2]["hosts"] == [] and one[2]["summary"]["approved"] == 1
    assert one[2]["hosts"][0]["appliance"]["version"] == "1.0.0"
    return [empty, one]


@pytest.fixture()
def out_download(
    capsys: pytest.CaptureFixture[str], index: LocalIndex, wheelhouse: Path, tmp_path: Path
) -> list[Output]:
    url = index.url.removesuffix("/simple") + "/files/alpha-1.0-py3-none-any.whl"
    out = run(capsys, ["download", url, "-o", str(tmp_path / "alpha.whl"), "--json"])
    assert (
        out[1] == 0
        and (tmp_path / "alpha.whl").read_bytes() == (wheelhouse / "alpha-1.0-py3-none-any.whl").read_bytes()
    )
    assert out[2]["resumed"] is False and out[2]["signature"] is None  # no sha256 ETag: a whole download; no .sig
    return [out]


@pytest.fixture()
def out_pull(
    capsys: pytest.CaptureFixture[str], appliance: Path, keys: Path, oci_target: str, tmp_path: Path
) -> list[Output]:
    assert run(capsys, ["publish", str(appliance), oci_target, "--json"])[1] == 0
    out = tmp_path / "pulled.pex"
    fresh = run(capsys, ["pull", f"{oci_target}:1.0.0", "-o", str(out), "--json"])
    again = run(capsys, ["pull", f"{oci_target}:1.0.0", "-o", str(out), "--root", str(keys / "1.root.json"), "--json"])
    assert fresh[1] == again[1] == 0 and out.read_bytes() == appliance.read_bytes()
    # The file being replaced serves every piece but the index, which held appliances never offer (as for deltas).
    assert fresh[2]["fetched_blobs"] == fresh[2]["blobs"] and again[2]["fetched_blobs"] == 1
    assert fresh[2]["signature"] == str(out) + ".sig" and again[2]["trust_anchor"] == "--root file"
    return [fresh, again]


# ---------------------------------------------------------------- settings, flags, and the MCP-only outputs


@pytest.fixture()
def out_config_show(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> list[Output]:
    monkeypatch.setenv("CHIRON_SYSTEM_CONFIG", str(tmp_path / "system.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "system.toml").write_text('[host]\nprefix = "/srv/chiron"\n[mcp]\nallow_paths = ["/srv"]\n')
    plain = run(capsys, ["config", "show", "--json"])
    given = run(capsys, ["config", "show", "--set", "host.wait=5", "--json"])
    rows = {r["key"]: r for r in given[2]["settings"]}
    assert plain[1] == given[1] == 0 and rows["host.wait"]["source"] == "option"
    assert rows["host.prefix"]["origin"] == str(tmp_path / "system.toml")
    return [plain, given]


@pytest.fixture()
def out_config_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> list[Output]:
    from openfeature import api

    api.clear_providers()
    monkeypatch.setenv("CHIRON_SYSTEM_CONFIG", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    defaults = run(capsys, ["config", "flags", "--json"])
    monkeypatch.setenv("CHIRON_FLAG_MCP_MUTATIONS", "on")
    monkeypatch.setenv("CHIRON_FLAG_MCP_HTTP", "perhaps")  # an evaluation error: the default, and a notice
    set_ = run(capsys, ["config", "flags", "--json"])
    assert [f["value"] for f in set_[2]["flags"]] == [True, False] and set_[2]["flags"][1]["error"]
    return [defaults, set_]


@pytest.fixture()
def out_policy_check(keys: Path, index: LocalIndex, tmp_path: Path) -> list[Output]:
    """The policy_check tool's report (chiron.engines.policycheck), on a locked spec with and without a policy."""
    from chiron.engines.policycheck import check_spec

    spec = write_spec(
        tmp_path / "spec",
        keys=keys,
        index_url=index.url,
        requirements=["alpha==1.0"],
        extra_python='lock = "pylock.toml"\n',
    )
    with pytest.raises(SystemExit) as exc:
        main(["lock", str(spec)])
    assert exc.value.code in (0, None)
    clean = check_spec(spec)
    (spec.parent / "policy.toml").write_text('[packages]\ndeny = ["beta"]\n[licenses]\nallow = ["MIT"]\n')
    denied = check_spec(spec)
    assert clean["ok"] and clean["policy"] is None and clean["packages"] == 2
    assert not denied["ok"] and [v["rule"] for v in denied["violations"]] == ["packages.deny"]
    assert denied["unchecked"]  # no local copy of the wheels: their licences are named as unchecked
    return [("policy_check spec", 0, clean), ("policy_check spec (policy)", 0, denied)]


@pytest.fixture()
def out_exit_code() -> list[Output]:
    """The explain_exit_code tool's answer (chiron.mcpserver.docs.explain from docs/exit-codes.md)."""
    from chiron.mcpserver.docs import explain

    outs = [(f"explain_exit_code {c}", 0, explain(c)) for c in (0, 1, 2, 3, 4, 130, 9)]
    assert [o[2]["known"] for o in outs] == [True] * 6 + [False]
    return outs
