"""Exit codes, one-line errors, JSON output and telemetry through the CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from chiron.cli import main
from chiron.core import proc as _proc
from chiron.errors import EnvironmentProblem

from helpers import write_spec


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_missing_archive_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", str(tmp_path / "nope.pex")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"chiron: error: {tmp_path / 'nope.pex'}: no such file"


def test_bad_root_sha256_is_usage_error(appliance: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", str(appliance), "--root-sha256", "xyz"]) == 2
    assert "--root-sha256: 'xyz' is not 64 hexadecimal digits" in capsys.readouterr().err


def test_both_anchors_is_usage_error(appliance: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", str(appliance), "--root", str(keys / "1.root.json"), "--root-sha256", "0" * 64]) == 2
    assert "not both" in capsys.readouterr().err


def test_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify", "--frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_verify_without_path_outside_an_archive(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verify"]) == 2
    assert "give the appliance to check" in capsys.readouterr().err


def test_bad_spec_build_json_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], tool_wheels: Path) -> None:
    spec = tmp_path / "appliance.toml"
    spec.write_text("[appliance]\nname = 'x'\n")
    assert run(["build", str(spec), "--tool-wheels", str(tool_wheels), "--json", "-o", str(tmp_path / "o.pex")]) == 2
    captured = capsys.readouterr()
    err = json.loads(captured.out)
    assert err["schema"] == "chiron.error/1" and err["exit_code"] == 2
    assert f"{spec}: appliance.version: required field is missing" in err["error"]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "o.pex").exists()


def test_verbose_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-v", "verify", str(tmp_path / "nope")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_wrong_signing_key_is_refused_at_build(
    tmp_path: Path,
    keys: Path,
    other_keys: Path,
    index,
    tool_wheels: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    spec = write_spec(tmp_path, keys=keys, index_url=index.url, requirements=["beta==1.0"])
    spec.write_text(spec.read_text().replace(f"file2:{keys}/targets.pem", f"file2:{other_keys}/targets.pem"))
    code = run(
        [
            "build",
            str(spec),
            "--tool-wheels",
            str(tool_wheels),
            "-o",
            str(tmp_path / "o.pex"),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert code == 2
    assert "is not a targets key of the root metadata" in capsys.readouterr().err
    assert not (tmp_path / "o.pex").exists()


def test_missing_program_is_environment_error() -> None:
    with pytest.raises(EnvironmentProblem) as exc:
        _proc.find_program("definitely-not-a-program-xyz")
    assert exc.value.exit_code == 3 and "was not found" in exc.value.message


def test_program_timeout_and_failure_are_actionable() -> None:
    py = _proc.Program("python", (sys.executable,))
    with pytest.raises(EnvironmentProblem, match="did not finish within 1 s"):
        _proc.run(py, ["-c", "import time; time.sleep(5)"], timeout=1)
    with pytest.raises(EnvironmentProblem, match=r"python failed \(exit 3\).*boom"):
        _proc.run(py, ["-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])


def test_telemetry_off_imports_nothing_and_warns_nothing(appliance: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "CHIRON_TRACE_FILE"}
    code = (
        "import sys, warnings; warnings.simplefilter('error');"
        "from chiron.cli import main\n"
        "try:\n main(['verify', sys.argv[1]])\nexcept SystemExit as e:\n"
        " assert e.code == 0, e.code\n"
        " assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'otel imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, str(appliance)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr


def test_verify_imports_only_the_layers_it_uses(appliance: Path) -> None:
    """Start-up follows the layers: verify needs the archive, trust and verify modules, not pydantic
    (typer's coercion of str/Path values included: chiron.cli.coercion), rich, docker, OpenTelemetry,
    the sources, nor the host, mirror or build engines."""
    code = (
        "import sys\n"
        "from chiron.cli import main\n"
        "try:\n main(['verify', sys.argv[1], '--log-format', 'json'])\nexcept SystemExit as e:\n"
        " assert e.code == 0, e.code\n"
        " heavy = {'pydantic', 'rich', 'docker', 'opentelemetry', 'cyclonedx'}\n"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(('chiron.sources',"
        " 'chiron.engines.host', 'chiron.engines.mirror', 'chiron.engines.build', 'chiron.core.models'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "CHIRON_TRACE_FILE"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(appliance)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_trace_file_gets_verify_span(appliance: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(["--trace-file", str(trace), "verify", str(appliance)]) == 0
    spans = [r for r in map(json.loads, trace.read_text().splitlines()) if "name" in r]  # metrics follow spans
    (span,) = [s for s in spans if s["name"] == "chiron.verify"]
    assert span["attributes"]["ok"] is True and span["attributes"]["bytes_hashed"] > 0
    assert span["end_ns"] >= span["start_ns"]


def test_inspect_json_and_text(appliance: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(appliance), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["schema"] == "chiron.inspect/1" and info["name"] == "demo"
    assert run(["inspect", str(appliance)]) == 0
    text = capsys.readouterr().out
    assert "demo 1.0.0" in text and "targets " in text and "gamma" in text and "threshold 1 of 1" in text


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("chiron ")


def test_os_errors_are_environment_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # A path the command line names that cannot be a directory is the operator's to fix (exit 2, issue 13
    # item 11); an OSError on a path chiron chose stays an environment error (test_os_errors_name_...).
    assert run(["keys", "init", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chiron: error:") and "Traceback" not in err


# ---------------------------------------------------------------- global options where users put them


def _tree():  # type: ignore[no-untyped-def]
    import typer

    from chiron.cli.app import app
    from chiron.cli.entry import register_commands

    register_commands()
    return typer.main.get_command(app)


@pytest.mark.parametrize(
    ("given", "parsed", "as_json"),
    [
        # a systemd unit's spelling: global options last
        (
            ["mirror", "refresh", "--store", "s", "--json", "--log-format", "json"],
            ["--log-format", "json", "mirror", "refresh", "--store", "s", "--json"],
            True,
        ),
        (["verify", "a.pex", "-v", "--trace-file=t.jsonl"], ["-v", "--trace-file=t.jsonl", "verify", "a.pex"], False),
        # --json before the command's name goes after it
        (["--json", "mirror", "status"], ["mirror", "status", "--json"], True),
        (["mirror", "--json", "status", "--store", "s"], ["mirror", "status", "--json", "--store", "s"], True),
        # an option's value is never taken for an option
        (
            ["install", "a.pex", "--registry", "--json", "--images", "push"],
            ["install", "a.pex", "--registry", "--json", "--images", "push"],
            False,
        ),
        (["keys", "status", "f", "--json"], ["keys", "status", "f", "--json"], True),
        # after --, nothing moves
        (["verify", "--", "-v"], ["verify", "--", "-v"], False),
        # a command without --json is told so by the parser (placed where it parses it)
        (["--json", "keys", "new-root", "d"], ["keys", "new-root", "--json", "d"], False),
    ],
)
def test_global_options_are_placed_where_typer_parses_them(given: list[str], parsed: list[str], as_json: bool) -> None:
    from chiron.cli.argv import place_options

    placed = place_options(_tree(), given)
    assert placed.args == parsed
    assert placed.json is as_json


def test_global_options_after_the_command(appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    assert run(["verify", str(appliance), "--log-format", "json", "--trace-file", str(trace)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"verified {appliance}: ")
    notices = [json.loads(line) for line in captured.err.splitlines()]
    # trust on first use, and the warning that nothing anchored the check, as JSON lines
    assert notices and all(n["level"] in ("notice", "warning") for n in notices)
    assert any(json.loads(line).get("name") == "chiron.verify" for line in trace.read_text().splitlines())
    assert run(["verify", str(tmp_path / "nope.pex"), "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_json_is_one_line_unless_stdout_is_a_terminal(
    appliance: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["inspect", str(appliance), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["schema"] == "chiron.inspect/1"  # JSON Lines when appended
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert run(["inspect", str(appliance), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") > 10 and out.startswith('{\n  "') and json.loads(out)["schema"] == "chiron.inspect/1"


# ---------------------------------------------------------------- nothing from an archive drives the terminal


def test_terminal_safe_escapes_controls_and_bidi() -> None:
    from chiron.core.text import terminal_safe

    assert terminal_safe("wheels/a.whl") == "wheels/a.whl"
    assert terminal_safe("\x1b[2K\rverified\x07") == "\\x1b[2K\\x0dverified\\x07"
    assert terminal_safe("a\x7fb\x9bc\x00") == "a\\x7fb\\x9bc\\x00"
    assert terminal_safe("evil\u202egnp.exe\u2066\u200f\u061c") == "evil\\u202egnp.exe\\u2066\\u200f\\u061c"
    assert terminal_safe("caf\u00e9 \u6f22") == "caf\u00e9 \u6f22"  # printable non-ASCII stays


def test_printed_lines_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from chiron.cli import app as cli_app

    cli_app.state.update(log_format="human")
    cli_app.say("member wheels/\x1b[1A\x1b[2Kx.whl\nverified\u202e")
    cli_app.log("error", "problem \x1b]0;title\x07")
    captured = capsys.readouterr()
    assert captured.out == "member wheels/\\x1b[1A\\x1b[2Kx.whl\nverified\\u202e\n"
    assert captured.err == "chiron: error: problem \\x1b]0;title\\x07\n"
    cli_app.state.update(log_format="json")
    try:
        cli_app.log("error", "problem \x1b[31m\u202e")
        cli_app.emit({"member": "\x1b[2J\u2066"})
    finally:
        cli_app.state.update(log_format="human")
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out and "\u202e" not in captured.err
    assert json.loads(captured.err)["message"] == "problem \x1b[31m\u202e"  # escaped in JSON, not lost
    assert json.loads(captured.out) == {"member": "\x1b[2J\u2066"}


# ---------------------------------------------------------------- OS errors: named, and the right exit code


def test_missing_named_inputs_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.pem"
    keys = [f"--key={role}={missing}" for role in ("root", "targets", "snapshot", "timestamp")]
    assert run(["keys", "new-root", str(tmp_path / "root"), *keys]) == 2
    assert capsys.readouterr().err == f"chiron: error: --key {missing}: no such file\n"
    assert run(["keys", "rotate", "root", "--root-dir", str(tmp_path), "--add", str(missing)]) == 2
    assert capsys.readouterr().err == f"chiron: error: --add {missing}: no such file\n"
    trace = tmp_path / "no" / "t.jsonl"
    assert run(["verify", str(tmp_path / "x.pex"), "--trace-file", str(trace)]) == 2
    assert capsys.readouterr().err == f"chiron: error: {trace}: its directory {trace.parent} does not exist\n"
    assert not trace.parent.exists()


def test_os_errors_name_the_file_and_the_step() -> None:
    import errno

    from chiron.cli.oserror import describe_os_error
    from chiron.core import progress

    with (
        pytest.raises(OSError) as raised,
        progress.step("writing dist/app.pex"),
        progress.bar(10, "packing wheels", enabled=False),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    err = describe_os_error(raised.value, ["-v", "build", "s.toml", "-o", "dist/app.pex"], ["build"])
    assert err.exit_code == 3
    assert err.diagnostics() == (
        "No space left on device (the system did not name the file), while writing dist/app.pex: packing wheels, "
        "running: chiron build s.toml -o dist/app.pex (free space on that filesystem, then run again)"
    )
    err = describe_os_error(
        PermissionError(errno.EACCES, "Permission denied", "/srv/s/x", None, "/srv/s/y"),
        ["mirror", "prune", "--store", "/srv/my store", "--log-format", "json"],
        ["mirror", "prune"],
    )
    assert err.exit_code == 3
    assert (
        err.message == "/srv/s/x -> /srv/s/y: Permission denied, running: chiron mirror prune --store '/srv/my store'"
    )
    # A missing file that the user did not name is the environment's, not bad usage.
    err = describe_os_error(
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/opt/c/state/x"), ["status"], ["status"]
    )
    assert err.exit_code == 3 and err.message.startswith("/opt/c/state/x: No such file or directory")


def test_upgrade_hand_over_passes_the_global_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """./new.pex upgrade ... --log-format json hands over to PREFIX/bin/chiron with the global options
    before the command's name, where every chiron version accepts them."""
    from chiron.engines.host import handover

    prefix = tmp_path / "p"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "chiron").write_text("#!/bin/sh\n")
    new = tmp_path / "new.pex"
    new.write_bytes(b"x")
    calls: list[list[str]] = []

    def execve(path: object, argv: list[str], env: dict[str, str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(handover, "self_archive", lambda: new)
    monkeypatch.setattr(handover.os, "execve", execve)
    monkeypatch.delenv("CHIRON_HANDED_OVER", raising=False)
    trace = tmp_path / "t.jsonl"
    assert run(["upgrade", str(new), "--prefix", str(prefix), "--log-format", "json", f"--trace-file={trace}"]) == 0
    (argv,) = calls
    assert argv[:4] == [str(prefix / "bin" / "chiron"), "--log-format", "json", f"--trace-file={trace}"]
    assert argv[4:6] == ["upgrade", str(new)]
    assert json.loads(capsys.readouterr().err.splitlines()[0])["message"].startswith("handing over")


def test_named_paths_that_exist_where_they_are_to_be_made_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file where the command line names a new directory is bad usage; damage below a named path
    is the host's."""
    import errno

    from chiron.cli.oserror import describe_os_error

    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    assert run(["keys", "init", "afile"]) == 2
    assert capsys.readouterr().err == "chiron: error: key directory afile: is not a directory\n"
    Path("prefix").mkdir()
    err = describe_os_error(
        FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "prefix/state/x")),
        ["status", "--prefix", "prefix"],
        ["status"],
    )
    assert err.exit_code == 3  # below the named path: the host's state
    err = describe_os_error(
        FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "nodir/.x.delta.tmp")),
        ["delta", "a.pex", "b.pex", "-o", "nodir/sub/../x.delta"],
        ["delta"],
    )
    assert (err.exit_code, err.message) == (2, "nodir/sub/../x.delta: its directory nodir does not exist")
