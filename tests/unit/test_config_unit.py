"""Settings layers and precedence, the typed model's checks, flags through OpenFeature, allowed paths,
the exit-code explanations: pure logic, no appliance."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openfeature import api

from chiron.core import config, flags
from chiron.core.settings import SECTION_MODELS, Settings, load
from chiron.errors import UsageError
from chiron.mcpserver import docs
from chiron.mcpserver.paths import PathRefused, Roots

from flagsite import SiteFlags


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No settings of the machine or the caller: no system file, an empty user config home, no CHIRON_*."""
    for var in list(os.environ):
        if var.startswith("CHIRON_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CHIRON_SYSTEM_CONFIG", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture()
def providers() -> Iterator[None]:
    api.clear_providers()
    yield
    api.clear_providers()


def _files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str, user: str) -> tuple[Path, Path]:
    sys_file, user_file = tmp_path / "system.toml", tmp_path / "xdg" / "chiron" / "config.toml"
    user_file.parent.mkdir(parents=True)
    sys_file.write_text(system)
    user_file.write_text(user)
    monkeypatch.setenv("CHIRON_SYSTEM_CONFIG", str(sys_file))
    return sys_file, user_file


# ---------------------------------------------------------------- precedence


PRECEDENCE = [
    # (system file, user file, environment, option) -> (value of host.prefix, source kind)
    (None, None, None, None, "/opt/chiron", "default"),
    ("/sys", None, None, None, "/sys", "system"),
    ("/sys", "/user", None, None, "/user", "user"),
    ("/sys", "/user", "/env", None, "/env", "env"),
    ("/sys", "/user", "/env", "/opt", "/opt", "option"),
    (None, None, "/env", "/opt", "/opt", "option"),
    ("/sys", None, "/env", None, "/env", "env"),
]


@pytest.mark.parametrize(("system", "user", "env", "option", "want", "source"), PRECEDENCE)
def test_precedence(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    system: str | None,
    user: str | None,
    env: str | None,
    option: str | None,
    want: str,
    source: str,
) -> None:
    sys_file, user_file = _files(
        tmp_path,
        monkeypatch,
        f'[host]\nprefix = "{system}"\n' if system else "",
        f'[host]\nprefix = "{user}"\n' if user else "",
    )
    if env:
        monkeypatch.setenv("CHIRON_PREFIX", env)
    effective = load({"host.prefix": option})
    assert effective.value("host.prefix") == Path(want)
    origin = {"default": None, "system": str(sys_file), "user": str(user_file), "env": "$CHIRON_PREFIX"}
    assert effective.sources["host.prefix"] == (source, origin.get(source, "--prefix"))


def test_layers_merge_by_key_not_by_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user file that sets [host] prefix keeps the system file's [host] installer."""
    sys_file, user_file = _files(
        tmp_path, monkeypatch, '[host]\ninstaller = "uv"\nprefix = "/a"\n', '[host]\nprefix = "/b"\n'
    )
    monkeypatch.setenv("CHIRON_WAIT", "2.5")
    monkeypatch.setenv("CHIRON_MCP_ALLOW_PATHS", os.pathsep.join(["/srv/a", "/srv/b"]))
    effective = load()
    assert effective.settings.host.installer == "uv" and effective.sources["host.installer"] == (
        "system",
        str(sys_file),
    )
    assert effective.settings.host.prefix == Path("/b") and effective.sources["host.prefix"] == ("user", str(user_file))
    assert effective.settings.host.wait == 2.5 and effective.sources["host.wait"] == ("env", "$CHIRON_WAIT")
    assert effective.settings.mcp.allow_paths == [Path("/srv/a"), Path("/srv/b")]
    assert effective.sources["serve.port"] == ("default", None) and effective.settings.serve.port == 8443


def test_config_file_named_replaces_the_user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sys, user_file = _files(tmp_path, monkeypatch, "", '[host]\nprefix = "/user"\n')
    named = tmp_path / "named.toml"
    named.write_text('[mirror]\nstore = "/stores/a"\n')
    monkeypatch.setenv("CHIRON_CONFIG", str(named))
    effective = load()
    assert effective.value("host.prefix") == Path("/opt/chiron")  # the user file is not read
    assert effective.sources["mirror.store"] == ("user", str(named))
    assert config.read_layers(config=user_file)[-1].label == str(user_file)  # --config wins over CHIRON_CONFIG
    with pytest.raises(UsageError, match=r"missing\.toml: settings file not found"):
        config.read_layers(config=tmp_path / "missing.toml")


def test_nothing_configured_means_no_layer(tmp_path: Path) -> None:
    """With no file and no CHIRON_* variable a command takes the defaults without building the model."""
    assert config.read_layers() == []
    assert not config.configured([])
    assert config.defaults()["host.prefix"] == Path("/opt/chiron")


def test_every_key_has_a_typed_field_with_the_same_default() -> None:
    fields = {f"{s}.{n}": f for s, model in SECTION_MODELS.items() for n, f in model.model_fields.items()}
    assert sorted(fields) == sorted(config.KEYS)
    for dotted, key in config.KEYS.items():
        field = fields[dotted]
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        assert default == key.default, dotted
    assert set(Settings.model_fields) == set(config.SECTIONS)
    envs = [k.env for k in config.KEYS.values() if k.env]
    assert len(envs) == len(set(envs)) and all(e.startswith("CHIRON_") for e in envs)


# ---------------------------------------------------------------- bad settings: one line naming file and key


BAD = [
    ('[host]\nprefx = "/x"\n', r"config\.toml: \[host\] prefx: unknown key \(known: prefix, state_dir"),
    ('[host]\nwait = "soon"\n', r"config\.toml: \[host\] wait: Input should be a valid number.*'soon'"),
    ("[serve]\nport = 70000\n", r"config\.toml: \[serve\] port: Input should be less than or equal to 65535"),
    ('[host]\ninstaller = "apt"\n', r"config\.toml: \[host\] installer: Input should be 'auto', 'uv' or 'pip'"),
    ("[hots]\nprefix = 1\n", r"config\.toml: \[hots\]: unknown section \(known: \[host\]"),
    ('prefix = "/x"\n', r"config\.toml: prefix: unknown key \(settings live in sections"),
    ('host = "x"\n', r"config\.toml: host: must be a table"),
    ("[flags]\nmcp_mutations = [1]\n", r"config\.toml: \[flags\] mcp_mutations"),
    ('[openfeature]\nprovider = "not a factory"\n', r"\[openfeature\] provider: String should match pattern"),
    ("[host\n", r"config\.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_user_file_is_one_line_naming_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    _files(tmp_path, monkeypatch, "", text)
    with pytest.raises(UsageError, match=message) as exc:
        load()
    assert "\n" not in exc.value.diagnostics() and str(tmp_path / "xdg") in exc.value.diagnostics()


def test_bad_environment_and_option_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIRON_SERVE_PORT", "eighty")
    with pytest.raises(UsageError, match=r"^\$CHIRON_SERVE_PORT: \[serve\] port: .*'eighty'"):
        load()
    monkeypatch.delenv("CHIRON_SERVE_PORT")
    with pytest.raises(UsageError, match=r"^--wait: \[host\] wait: Input should be greater than or equal to 0"):
        load({"host.wait": -1})


def test_settings_file_that_is_not_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    monkeypatch.setenv("CHIRON_SYSTEM_CONFIG", str(fifo))
    with pytest.raises(UsageError, match="not a regular file"):
        config.read_layers()


# ---------------------------------------------------------------- flags


def _notices() -> tuple[list[str], object]:
    seen: list[str] = []
    return seen, seen.append


def test_settings_provider_gives_flag_values_and_sources(providers: None) -> None:
    seen, notice = _notices()
    values = {"mcp_mutations": ("yes", "$CHIRON_FLAG_MCP_MUTATIONS")}
    assert flags.use_provider(values, None, {}, notice) == flags.SettingsProvider.NAME  # type: ignore[arg-type]
    on = flags.evaluate("mcp_mutations", notice)  # type: ignore[arg-type]
    assert (on.value, on.default, on.source, on.error) == (True, False, "$CHIRON_FLAG_MCP_MUTATIONS", None)
    off = flags.evaluate("mcp_http", notice)  # type: ignore[arg-type]
    assert (off.value, off.source) == (False, "default")
    assert seen == []


def test_flag_of_the_wrong_type_gives_default_and_notice(providers: None) -> None:
    seen, notice = _notices()
    flags.use_provider({"mcp_mutations": ("maybe", "/etc/chiron/config.toml")}, None, {}, notice)  # type: ignore[arg-type]
    got = flags.evaluate("mcp_mutations", notice)  # type: ignore[arg-type]
    assert got.value is False and got.error and "TYPE_MISMATCH" in got.error
    assert seen == [
        "flag mcp_mutations: TYPE_MISMATCH: /etc/chiron/config.toml: 'maybe' is not a bool; using its default (false)"
    ]


def test_provider_registered_by_the_application_answers(providers: None) -> None:
    """An application (here the test) that registered its own provider keeps it: it decides the flag."""
    api.set_provider(SiteFlags({"mcp_mutations": True}))
    seen, notice = _notices()
    name = flags.use_provider({"mcp_mutations": (False, "config")}, None, {}, notice)  # type: ignore[arg-type]
    assert name == "site flags"
    got = flags.evaluate("mcp_mutations", notice)  # type: ignore[arg-type]
    assert (got.value, got.provider) == (True, "site flags") and seen == []


def test_provider_named_in_the_settings_answers(providers: None) -> None:
    seen, notice = _notices()
    name = flags.use_provider({}, "flagsite:make", {"values": {"mcp_http": True}}, notice)  # type: ignore[arg-type]
    assert name == "site flags" and flags.evaluate("mcp_http", notice).value is True  # type: ignore[arg-type]
    assert seen == []


def test_failing_provider_gives_defaults_never_a_crash(providers: None) -> None:
    seen, notice = _notices()
    flags.use_provider({}, "flagsite:make", {"broken": True}, notice)  # type: ignore[arg-type]
    got = flags.evaluate("mcp_mutations", notice)  # type: ignore[arg-type]
    assert got.value is False and got.error and "GENERAL" in got.error
    assert "flag service unreachable" in seen[-1]
    # A factory that cannot be imported: a notice, and chiron's settings answer.
    name = flags.use_provider({"mcp_http": (True, "x")}, "no_such_module:make", {}, notice)  # type: ignore[arg-type]
    assert name == flags.SettingsProvider.NAME and "ModuleNotFoundError" in seen[-1]
    assert flags.evaluate("mcp_http", notice).value is True  # type: ignore[arg-type]


# ---------------------------------------------------------------- allowed paths


def test_paths_under_allowed_roots(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "sub").mkdir(parents=True)
    other.mkdir()
    (root / "a.pex").write_bytes(b"x")
    (root / "out").symlink_to(other)  # a link inside the root that leads out of it
    (root / "in").symlink_to(root / "sub")  # a link that stays inside
    (tmp_path / "alias").symlink_to(root)  # the root under another name
    roots = Roots.of([root])
    assert roots.check(str(root / "a.pex"), "archive") == root / "a.pex"
    assert roots.check(str(root / "in" / "x"), "archive") == root / "sub" / "x"  # need not exist yet
    assert roots.check(str(root), "prefix") == root
    refused = [
        (str(other / "a.pex"), "outside the allowed roots"),
        (str(root / ".." / "other"), "outside the allowed roots"),
        (str(root / "out" / "a.pex"), f"resolves to {other / 'a.pex'}, outside the allowed roots"),
        (str(tmp_path / "alias" / "a.pex"), "outside the allowed roots"),
        ("a.pex", "give an absolute path"),
        ("", "not a path"),
        (str(root) + "-sibling/x", "outside the allowed roots"),
    ]
    for given, message in refused:
        with pytest.raises(PathRefused, match=message):
            roots.check(given, "archive")
    with pytest.raises(PathRefused, match="no path is allowed"):
        Roots.of([]).check(str(root / "a.pex"), "archive")
    with pytest.raises(UsageError, match="no such directory"):
        Roots.of([tmp_path / "missing"])
    # Allowed under its own name (a link), a path written under that name is allowed and resolved.
    assert Roots.of([tmp_path / "alias"]).check(str(tmp_path / "alias" / "a.pex"), "archive") == root / "a.pex"


# ---------------------------------------------------------------- exit codes


def test_exit_codes_are_explained_from_the_docs() -> None:
    for code, name in [(0, "ok"), (1, "verify_failed"), (2, "usage"), (3, "environment"), (4, "refused")]:
        info = docs.explain(code)
        assert info["known"] and info["name"] == name and info["meaning"] and info["what_to_do"]
    assert {c["class"] for c in docs.explain(4)["classes"]} >= {"Refused", "PolicyViolation", "HostStateError"}
    assert {c["class"] for c in docs.explain(2)["classes"]} >= {"UsageError", "SpecError", "LockError"}
    assert docs.explain(130)["name"] == "interrupted"
    unknown = docs.explain(7)
    assert not unknown["known"] and unknown["classes"] == [] and unknown["name"] is None


def test_runbooks_are_packaged() -> None:
    names = {book.name for book in docs.runbooks()}
    assert {"install-and-upgrade", "mirror-refresh", "verify-on-air-gapped-host"} <= names
    assert docs.schema("verify")["properties"]["schema"]["const"] == "chiron.verify/1"
