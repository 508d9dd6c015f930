"""A bad spec names the file, the field and what is wrong (table-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiron.core.spec import load_spec
from chiron.errors import SpecError

from helpers import ENV_311, write_spec


def _spec(tmp_path: Path) -> str:
    return write_spec(
        tmp_path,
        keys=tmp_path / "k",
        index_url="http://127.0.0.1:1/simple",
        requirements=["alpha==1.0"],
        environments=ENV_311,
    ).read_text()


CASES = [
    ("missing name", lambda s: s.replace('name = "demo"\n', ""), "appliance.name: required field is missing"),
    ("bad name", lambda s: s.replace('name = "demo"', 'name = "my demo!"'), "appliance.name: must be 1-64 characters"),
    (
        "bad version",
        lambda s: s.replace('version = "1.0.0"', 'version = "one"'),
        "appliance.version: 'one' is not a PEP 440",
    ),
    (
        "unknown field",
        lambda s: s.replace("[python]", "[python]\nindex_ulr = 'x'"),
        "python.index_ulr: unknown field",
    ),
    (
        "bad duration",
        lambda s: s.replace('expires = "30d"', 'expires = "30 days"'),
        "trust.roles.targets.expires: '30 days' is not a duration",
    ),
    (
        "threshold above keys",
        lambda s: s.replace('expires = "30d"', 'expires = "30d"\nthreshold = 2'),
        "trust.roles.targets: threshold 2 is more than the 1 key(s) listed",
    ),
    (
        "bad platform tag",
        lambda s: s.replace("manylinux_2_17_x86_64", "Linux X86"),
        "environments[0].platforms: 'Linux X86' is not a platform tag",
    ),
    (
        "bad python version",
        lambda s: s.replace('python_version = "3.11"', 'python_version = "3"'),
        "environments[0].python_version",
    ),
    ("duplicate environment", lambda s: s + ENV_311.replace("[[environments]]", "\n[[environments]]"), None),
    ("bad key uri", lambda s: s.replace('["file2:', '["nocolon'), "trust.roles.targets.keys[0].uri"),
    (
        "missing role",
        lambda s: s.replace("[trust.roles.snapshot]", "[trust.roles.root]"),
        "trust.roles: missing role(s) snapshot",
    ),
    (
        "unknown role",
        lambda s: s.replace("[trust.roles.snapshot]", "[trust.roles.mirror]"),
        "unknown role(s) mirror",
    ),
    (
        "no requirements",
        lambda s: s.replace('requirements = ["alpha==1.0"]', "requirements = []"),
        "python: give 'requirements' or 'lock'",
    ),
    ("escaping file dest", lambda s: s + '\n[[files]]\nsrc = "a"\ndest = "../x"\n', "files[0].dest"),
    ("not toml", lambda s: s + "\n[[[", "not valid TOML"),
    (
        "duplicate file dest",
        lambda s: s + '\n[[files]]\nsrc = "a"\ndest = "x"\n[[files]]\nsrc = "b"\ndest = "x"\n',
        "files: dest used twice: x",
    ),
    (
        "no index and no find_links",
        lambda s: s.replace('index_url = "http://127.0.0.1:1/simple"', 'index_url = ""'),
        "python: give 'index_url' or 'find_links'",
    ),
]


@pytest.mark.parametrize(("what", "edit", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_spec_names_file_and_field(tmp_path: Path, what: str, edit, expect: str | None) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "appliance.toml"
    path.write_text(edit(_spec(tmp_path)))
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = exc.value.message
    assert msg.startswith(f"{path}: "), msg
    if expect is not None:
        assert expect in msg, msg
    assert "\n" not in msg


def test_duplicate_environment_named(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(_spec(tmp_path) + ENV_311)
    with pytest.raises(SpecError, match="environment name\\(s\\) used twice: cp311"):
        load_spec(path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_variables_expand_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chiron.core.models import KeyRef

    path = tmp_path / "appliance.toml"
    path.write_text(_spec(tmp_path))
    loaded = load_spec(path)
    monkeypatch.setenv("KEYDIR", "/keys")
    assert loaded.resolve_key_uri(KeyRef(uri="file2:${KEYDIR}/t.pem"), "k") == "file2:/keys/t.pem"
    assert loaded.resolve_key_uri(KeyRef(uri="file2:${NOPE_X:-rel}/t.pem"), "k") == f"file2:{tmp_path}/rel/t.pem"
    assert loaded.resolve_key_uri(KeyRef(uri="hsm:2?label=x"), "k") == "hsm:2?label=x"
    with pytest.raises(SpecError, match="environment variable NOPE_Y is not set"):
        loaded.resolve_path("${NOPE_Y}/root.json", "trust.root")
    assert loaded.resolve_path("sub/x", "f") == tmp_path / "sub" / "x"
