"""chiron config show / flags through the real CLI, commands that take their options from the settings, and
start-up: commands that read no setting, or run with nothing configured, do not pay for pydantic-settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from openfeature import api

from chiron.cli import app as cli_app
from chiron.cli import main

from conftest import REPO

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No settings of the machine or of the caller; OpenFeature as a fresh process has it."""
    for var in list(os.environ):
        if var.startswith("CHIRON_") and var != "CHIRON_REQUIRE_COMPONENTS":
            monkeypatch.delenv(var)
    monkeypatch.setenv("CHIRON_SYSTEM_CONFIG", str(tmp_path / "etc" / "config.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cli_app.state.update({"verbose": False, "json": False, "log_format": "human"})
    api.clear_providers()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((REPO / "docs" / "schemas" / f"{name}.schema.json").read_text()))


def test_config_show_names_the_source_of_every_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = _write(
        tmp_path / "etc" / "config.toml",
        '[host]\nprefix = "/sys"\ninstaller = "pip"\nimages = "skip"\nwait = 1.0\n[serve]\nport = 9000\n',
    )
    user = _write(
        tmp_path / "xdg" / "chiron" / "config.toml", '[host]\nprefix = "/user"\ninstaller = "uv"\nwait = 2.0\n'
    )
    monkeypatch.setenv("CHIRON_WAIT", "3")
    monkeypatch.setenv("CHIRON_MCP_ALLOW_PATHS", f"/srv/a{os.pathsep}/srv/b")
    code, out, _err = run(capsys, ["config", "show", "--set", "host.prefix=/opt/given", "--json"])
    assert code == 0
    doc = json.loads(out)
    assert not list(_schema("config-show").iter_errors(doc))
    rows = {r["key"]: (r["value"], r["source"], r["origin"]) for r in doc["settings"]}
    assert rows["host.prefix"] == ("/opt/given", "option", "--prefix")  # option > env > user > system > default
    assert rows["host.wait"] == (3.0, "env", "$CHIRON_WAIT")
    assert rows["host.installer"] == ("uv", "user", str(user))
    assert rows["host.images"] == ("skip", "system", str(system))
    assert rows["serve.port"] == (9000, "system", str(system))
    assert rows["host.registry"] == (None, "default", None)
    assert rows["mcp.allow_paths"] == (["/srv/a", "/srv/b"], "env", "$CHIRON_MCP_ALLOW_PATHS")
    assert doc["files"] == {
        "system": {"path": str(system), "exists": True},
        "user": {"path": str(user), "exists": True},
    }
    # The human table says the same, one line per key.
    code, out, _err = run(capsys, ["config", "show"])
    line = next(x for x in out.splitlines() if x.startswith("host.installer"))
    assert code == 0 and "uv" in line and f"(user: {user})" in line


def test_global_config_option_names_the_user_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    named = _write(tmp_path / "site.toml", '[mirror]\nstore = "/stores/site"\n')
    code, out, _err = run(capsys, ["config", "show", "--json", "--config", str(named)])  # global option, anywhere
    rows = {r["key"]: r for r in json.loads(out)["settings"]}
    assert (
        code == 0 and rows["mirror.store"]["value"] == "/stores/site" and rows["mirror.store"]["origin"] == str(named)
    )
    code, _out, err = run(capsys, ["--config", str(tmp_path / "nope.toml"), "config", "show"])
    assert (
        code == 2
        and err.strip()
        == f"chiron: error: {tmp_path / 'nope.toml'}: settings file not found (check --config / CHIRON_CONFIG)"
    )


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('[host]\nprefx = "/x"\n', "[host] prefx: unknown key (known: prefix, state_dir, installer, images"),
        ('[mirror]\nstore = 5\n[serve]\nport = "x"\n', "[mirror] store: Input is not a valid path"),
    ],
)
def test_unknown_key_or_wrong_type_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expect: str
) -> None:
    user = _write(tmp_path / "xdg" / "chiron" / "config.toml", text)
    for argv in (["config", "show"], ["status"], ["mirror", "status"]):  # every command that reads a setting
        code, out, err = run(capsys, argv)
        assert code == 2 and out == "", argv
        assert err.startswith(f"chiron: error: {user}: {expect}") and err.count("\n") == 1, err
    code, out, _err = run(capsys, ["config", "show", "--json"])
    assert code == 2 and json.loads(out)["schema"] == "chiron.error/1"


def test_commands_take_their_options_from_the_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """status and mirror status act on the prefix and store the settings name; an explicit option wins."""
    prefix, store = tmp_path / "configured-prefix", tmp_path / "configured-store"
    _write(tmp_path / "xdg" / "chiron" / "config.toml", f'[host]\nprefix = "{prefix}"\n[mirror]\nstore = "{store}"\n')
    code, _out, err = run(capsys, ["status"])
    assert code == 2 and f"{prefix}: nothing is installed here" in err
    code, _out, err = run(capsys, ["status", "--prefix", str(tmp_path / "given")])
    assert code == 2 and f"{tmp_path / 'given'}: nothing is installed here" in err
    code, _out, err = run(capsys, ["mirror", "status"])
    assert code == 2 and f"{store}: not a mirror store" in err
    code, _out, err = run(capsys, ["--log-format", "json", "status"])
    assert json.loads(err)["message"].startswith(f"{prefix}: nothing is installed")


def test_telemetry_settings_apply_to_every_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _write(tmp_path / "etc" / "config.toml", '[telemetry]\nlog_format = "json"\n')
    code, _out, err = run(capsys, ["status", "--prefix", str(tmp_path / "p")])
    assert code == 2 and json.loads(err)["level"] == "error"
    code, _out, err = run(capsys, ["--log-format", "human", "status", "--prefix", str(tmp_path / "p")])
    assert err.startswith("chiron: error: ")


def test_config_flags_through_openfeature(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    user = _write(tmp_path / "xdg" / "chiron" / "config.toml", "[flags]\nmcp_mutations = true\nfuture_thing = 1\n")
    monkeypatch.setenv("CHIRON_FLAG_MCP_HTTP", "maybe")
    code, out, err = run(capsys, ["config", "flags", "--json"])
    doc = json.loads(out)
    assert code == 0 and not list(_schema("config-flags").iter_errors(doc))
    got = {f["name"]: (f["value"], f["default"], f["source"], bool(f["error"])) for f in doc["flags"]}
    assert got == {
        "mcp_mutations": (True, False, str(user), False),
        "mcp_http": (False, False, "$CHIRON_FLAG_MCP_HTTP", True),
    }
    assert doc["provider"] == "chiron settings" and doc["unknown"] == ["future_thing"]
    assert "flag mcp_http: TYPE_MISMATCH" in err and "using its default (false)" in err  # a notice, not a crash


def test_site_provider_from_the_settings_changes_a_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))  # where a site's provider module would be installed
    _write(
        tmp_path / "xdg" / "chiron" / "config.toml",
        '[flags]\nmcp_http = false\n[openfeature]\nprovider = "flagsite:make"\n'
        "[openfeature.options]\nvalues = { mcp_http = true }\n",
    )
    code, out, _err = run(capsys, ["config", "flags", "--json"])
    doc = json.loads(out)
    got = {f["name"]: (f["value"], f["provider"]) for f in doc["flags"]}
    assert code == 0 and doc["provider"] == "site flags"
    assert got == {"mcp_http": (True, "site flags"), "mcp_mutations": (False, "site flags")}


def _modules_after(argv: list[str], env: dict[str, str]) -> list[str]:
    code = (
        "import sys\nfrom chiron.cli import main\n"
        f"try:\n main({argv!r})\nexcept SystemExit:\n pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "{'pydantic', 'pydantic_settings', 'openfeature', 'mcp'}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return list(json.loads(proc.stdout.splitlines()[-1].replace("'", '"')))


def test_start_up_pays_for_settings_only_when_something_is_configured(appliance: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHIRON_", "OTEL_"))}
    env |= {"CHIRON_SYSTEM_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    status = ["status", "--prefix", str(tmp_path / "p")]
    assert _modules_after(status, env) == ["pydantic"]  # the host engine's models; no settings model, no flags
    assert _modules_after(["verify", str(appliance)], env) == []
    _write(tmp_path / "xdg" / "chiron" / "config.toml", f'[host]\nprefix = "{tmp_path / "p"}"\n')
    assert _modules_after(["status"], env) == ["pydantic", "pydantic_settings"]
    assert _modules_after(["verify", str(appliance)], env) == []  # a file without [telemetry]: verify reads none
