"""The trial after the switch (issue 19), in the unit tier: the spec's activation fields, the Compose
file's checks and pinning, the typed trial state, the verdict on an open trial, and the revert of an
abandoned trial on a host laid out on disk (release directories with their records, no venvs)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from chiron.core import compose
from chiron.core.hoststate import (
    STATE_SCHEMA,
    CheckResult,
    HostState,
    ReleaseRecord,
    Trial,
    dump,
    format_time,
    parse_model,
    parse_time,
    read_model,
)
from chiron.core.models import HostSection, LiveCheck
from chiron.core.spec import load_spec_bytes
from chiron.engines.host import activation, trial
from chiron.engines.host.paths import Paths, now
from chiron.errors import HostStateError, SpecError, UsageError

# ---------------------------------------------------------------- the spec


def test_hooks_are_argv_lists_or_tables_with_a_timeout() -> None:
    host = HostSection.model_validate(
        {"pre_switch": ["systemctl", "stop", "app"], "post_switch": {"argv": ["true"], "timeout": 5}}
    )
    assert host.pre_switch is not None and host.pre_switch.argv == ["systemctl", "stop", "app"]
    assert host.pre_switch.timeout == 60 and host.post_switch is not None and host.post_switch.timeout == 5
    assert host.activates and not HostSection(pre_switch=host.pre_switch).activates
    for bad in ({"pre_switch": []}, {"pre_switch": [""]}, {"post_switch": {"argv": ["x"], "timeout": 0}}):
        with pytest.raises(ValidationError):
            HostSection.model_validate(bad)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "exactly one of 'url'"),
        ({"url": "http://127.0.0.1:1/", "command": ["true"]}, "exactly one of 'url'"),
        ({"url": "ftp://127.0.0.1/"}, "is not an http:// or https:// URL"),
        ({"command": ["true"], "body": "ok"}, "body applies to an HTTP check"),
        ({"url": "http://127.0.0.1:1/", "deadline": 0}, "greater than or equal to 1"),
    ],
)
def test_a_live_check_is_an_http_check_or_a_command(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        LiveCheck.model_validate(fields)


def _spec_toml(host: str, files: str = "") -> bytes:
    return f"""
[appliance]
name = "svc"
version = "1.0.0"
[python]
requirements = ["beta==1.0"]
[[environments]]
name = "cp311"
python_version = "3.11"
platforms = ["manylinux_2_17_x86_64"]
[trust]
root = "keys/1.root.json"
[trust.roles.targets]
keys = ["file2:t.pem"]
expires = "7d"
[trust.roles.snapshot]
keys = ["file2:s.pem"]
expires = "7d"
[trust.roles.timestamp]
keys = ["file2:ts.pem"]
expires = "1d"
{files}
[host]
{host}
""".encode()


def test_compose_must_be_a_shipped_file() -> None:
    with pytest.raises(SpecError, match=r"host\.compose: 'compose\.yaml' is not the dest of a \[\[files\]\] entry"):
        load_spec_bytes(_spec_toml('compose = "compose.yaml"'), "appliance.toml")
    files = '[[files]]\nsrc = "deploy/compose.yaml"\ndest = "compose.yaml"\n'
    spec = load_spec_bytes(_spec_toml('compose = "compose.yaml"\n[host.live_check]\nurl = "http://127.0.0.1:8080/"\n',
                                      files), "appliance.toml").spec  # fmt: skip
    assert spec.host.compose == "compose.yaml" and spec.host.live_check is not None and spec.host.activates


# ---------------------------------------------------------------- the Compose file


COMPOSE = b"""
x-common: &common
  network_mode: host
  stop_signal: SIGKILL
services:
  web:
    <<: *common
    image: chiron-test/act:1
    command: ["busybox", "httpd", "-f", "-p", "127.0.0.1:8080"]
  worker:
    <<: *common
    image: chiron-test/act:1
"""


def test_compose_images_are_checked_against_the_carried_ones_and_pinned() -> None:
    doc = compose.parse(COMPOSE, "compose.yaml")
    assert compose.check_carried(doc, ["chiron-test/act:1"], "c") == {
        "web": "chiron-test/act:1",
        "worker": "chiron-test/act:1",
    }
    with pytest.raises(SpecError, match=r"the service image\(s\) chiron-test/act:1 are not carried .*: other:1\)"):
        compose.check_carried(doc, ["other:1"], "c")
    pinned = json.loads(compose.pinned(doc, {"chiron-test/act:1": "sha256:" + "a" * 64}))
    assert {s["image"] for s in pinned["services"].values()} == {"sha256:" + "a" * 64}
    assert pinned["services"]["web"]["network_mode"] == "host"  # the merge key was expanded
    assert doc["services"]["web"]["image"] == "chiron-test/act:1"  # the parsed document is left as it was


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"services: [a", "is not valid YAML"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"version: '3'\n", "no 'services' mapping"),
        (b"services:\n  web:\n    build: .\n", "'build' cannot run on a disconnected host"),
        (b"services:\n  web:\n    command: x\n", r"services\.web: has no 'image'"),
        (b"services:\n  web:\n    image: a\n    labels:\n      when: 2024-01-01\n", "a YAML date is not a plain value"),
        (b"services:\n  web:\n    image: a\n    x:\n      1: b\n", "key 1 is not a string"),
    ],
)
def test_a_bad_compose_file_is_one_clear_error(text: bytes, problem: str) -> None:
    with pytest.raises(SpecError, match=problem):
        compose.check_carried(compose.parse(text, "compose.yaml"), ["a"], "compose.yaml")


def test_a_compose_file_that_expands_without_bound_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = ("\n".join(lines) + "\nservices:\n  web:\n    image: a\n    labels: *a8\n").encode()
    with pytest.raises(SpecError, match="more than 100000 values once its aliases are expanded"):
        compose.parse(bomb, "compose.yaml")
    with pytest.raises(SpecError, match="more than a Compose file may hold"):
        compose.parse(b"#" * (compose.MAX_BYTES + 1), "compose.yaml")


def test_images_pushed_to_a_registry_are_pinned_by_manifest_digest() -> None:
    from chiron.engines.host.activation import repository_path

    assert repository_path("registry.lab.example:5000/team/web:2.4.1") == "team/web"
    assert repository_path("localhost/web@sha256:" + "a" * 64) == "web"
    assert repository_path("team/web:1") == "team/web" and repository_path("web") == "web"


def test_project_name_is_one_per_appliance() -> None:
    assert compose.project_name("My.App_1") == "chiron-my-app_1"


# ---------------------------------------------------------------- the typed trial state


def _trial(**changes: object) -> Trial:
    at = now()
    fields: dict[str, object] = {
        "release": "svc-1.1.0-2",
        "previous": "svc-1.0.0-1",
        "phase": "on-trial",
        "since": format_time(at),
        "deadline": format_time(at + timedelta(minutes=30)),
        "external": True,
        "boot_id": "boot-a",
        "pid": 1,
    }
    return Trial.model_validate({**fields, **changes})


def test_trial_json_round_trips_and_damage_is_one_error(tmp_path: Path) -> None:
    check = CheckResult(time=format_time(now()), ok=False, attempts=3, output="HTTP 503")
    t = _trial(last_check=check)
    path = tmp_path / "trial.json"
    assert parse_model(Trial, dump(t), path) == t
    for damage, where in (
        ({"phase": "maybe"}, "field 'phase'"),
        ({"release": "../../etc"}, "field 'release'"),
        ({"pid": "1"}, "field 'pid'"),
        ({"deadline": "tomorrow"}, "field 'deadline'"),
    ):
        data = {**json.loads(dump(t)), **damage}
        with pytest.raises(HostStateError, match=f"^{path}: {where}: ") as exc:
            parse_model(Trial, json.dumps(data).encode(), path)
        assert "state damaged" in str(exc.value.hint)


def test_verdict_on_an_open_trial() -> None:
    at = now()
    assert trial.verdict(_trial(), at, "boot-a") is None  # waiting for chiron commit, in time, same boot
    assert "interrupted" in str(trial.verdict(_trial(external=False), at, "boot-a"))
    assert "restarted" in str(trial.verdict(_trial(), at, "boot-b"))
    assert "without 'chiron commit'" in str(trial.verdict(_trial(), at + timedelta(minutes=31), "boot-a"))
    assert trial.verdict(_trial(phase="committed"), at + timedelta(days=1), "boot-b") is None
    assert trial.verdict(_trial(phase="reverting", reason="live check failed"), at, "boot-a") == "live check failed"


def test_trial_until_durations() -> None:
    assert trial.parse_until("90s") == timedelta(seconds=90)
    assert trial.parse_until("30m") == timedelta(minutes=30)
    assert trial.parse_until("2h") == timedelta(hours=2)
    for bad in ("0m", "30", "m", "1y", "-5m"):
        with pytest.raises(UsageError, match="is not a duration like 30m"):
            trial.parse_until(bad)


def test_output_is_bounded_and_escaped() -> None:
    out = activation.clean("first\n" + "x" * 5000 + "\n\x1b[2Jcleared\n")
    assert out.startswith("...") and len(out) <= 2000  # the end is kept: errors come last
    assert "\x1b" not in out and out.endswith("x | \\x1b[2Jcleared")


# ---------------------------------------------------------------- revert of an abandoned trial, on disk


def _release(paths: Paths, rid: str, version: str, host: HostSection | None) -> ReleaseRecord:
    rec = ReleaseRecord(
        name="svc",
        version=version,
        created=None,
        environment="cp311",
        metadata_versions={"targets": 1},
        installed=format_time(now()),
        installer="uv",
        archive="/a.pex",
        targets_sha256="0" * 64,
    )
    slot = paths.release(rid)
    (slot / "venv" / "bin").mkdir(parents=True)
    (slot / "release.json").write_bytes(dump(rec))
    if host is not None:
        (slot / activation.ACTIVATION_FILE).write_bytes(dump(host))
    return rec


def _host(tmp_path: Path, on_revert: list[str] | None) -> Paths:
    paths = Paths.make(tmp_path / "p", None)
    paths.state.mkdir(parents=True, mode=0o700)
    marker = tmp_path / "on_revert"
    hook = ["sh", "-c", f'echo "$CHIRON_RELEASE $CHIRON_PREVIOUS" > {marker}'] if on_revert is None else on_revert
    old = _release(paths, "svc-1.0.0-1", "1.0.0", None)
    new = _release(paths, "svc-1.1.0-2", "1.1.0", HostSection.model_validate({"on_revert": hook}))
    state = HostState(
        schema_=STATE_SCHEMA,
        current="svc-1.1.0-2",
        previous="svc-1.0.0-1",
        releases={"svc-1.0.0-1": old, "svc-1.1.0-2": new},
        metadata_digests={},
    )
    paths.state_file.write_bytes(dump(state))
    os.symlink("releases/svc-1.1.0-2", paths.current)
    return paths


def _audit(paths: Paths) -> list[tuple[str, str]]:
    return [(e["op"], e["result"]) for e in map(json.loads, paths.audit.read_text().splitlines())]


def test_an_interrupted_trial_is_reverted_and_trust_is_kept(tmp_path: Path) -> None:
    paths = _host(tmp_path, None)
    paths.trial.write_bytes(dump(_trial(external=False)))
    floor = paths.state / "floor.json"
    floor.write_text('{"floor": "2030-01-01T00:00:00Z"}\n')
    outcome = trial.recover_trial(paths)
    assert outcome is not None and "was reverted: svc-1.0.0-1 is live again" in outcome and "interrupted" in outcome
    assert os.readlink(paths.current) == "releases/svc-1.0.0-1"
    state = read_model(HostState, paths.state_file)
    assert state is not None and (state.current, state.previous) == ("svc-1.0.0-1", "svc-1.1.0-2")
    ended = trial.read_trial(paths)
    assert ended is not None and ended.phase == "reverted" and ended.ended is not None
    # on_revert ran from the failed release, with the release now live as CHIRON_RELEASE.
    assert (tmp_path / "on_revert").read_text().split() == [
        str(paths.release(r)) for r in ("svc-1.0.0-1", "svc-1.1.0-2")
    ]
    assert _audit(paths) == [("trial", "failed"), ("revert", "ok")]
    assert floor.read_text() == '{"floor": "2030-01-01T00:00:00Z"}\n'  # a revert never lowers trust
    assert trial.recover_trial(paths) is None  # ended: nothing more to do


def test_an_open_trial_in_time_is_left_alone_and_one_past_its_deadline_reverts(tmp_path: Path) -> None:
    paths = _host(tmp_path, None)
    open_trial = _trial(boot_id=trial.boot_id())
    paths.trial.write_bytes(dump(open_trial))
    assert trial.recover_trial(paths) is None
    assert os.readlink(paths.current) == "releases/svc-1.1.0-2"
    late = open_trial.model_copy(update={"deadline": format_time(parse_time(open_trial.since) - timedelta(seconds=1))})
    paths.trial.write_bytes(dump(late))
    assert "without 'chiron commit'" in str(trial.recover_trial(paths))
    assert os.readlink(paths.current) == "releases/svc-1.0.0-1"


def test_a_failing_on_revert_hook_still_reverts_and_says_so(tmp_path: Path) -> None:
    paths = _host(tmp_path, ["sh", "-c", "echo cannot restart >&2; exit 7"])
    paths.trial.write_bytes(dump(_trial(external=False)))
    outcome = str(trial.recover_trial(paths))
    assert "on_revert hook failed (exit 7): cannot restart" in outcome
    assert os.readlink(paths.current) == "releases/svc-1.0.0-1"
    assert _audit(paths) == [("trial", "failed"), ("revert", "failed")]


def test_a_revert_interrupted_after_the_switch_back_is_finished(tmp_path: Path) -> None:
    paths = _host(tmp_path, None)
    # The crash came after current went back but before state.json was rewritten.
    paths.trial.write_bytes(dump(_trial(phase="reverting", reason="live check failed: HTTP 503")))
    os.unlink(paths.current)
    os.symlink("releases/svc-1.0.0-1", paths.current)
    from chiron.engines.host.state import check_agreement

    before = read_model(HostState, paths.state_file)
    assert before is not None
    check_agreement(paths, before)  # the state agrees with the disk while a revert is under way
    assert "live check failed: HTTP 503" in str(trial.recover_trial(paths))
    state = read_model(HostState, paths.state_file)
    assert state is not None and state.current == "svc-1.0.0-1"
    assert _audit(paths) == [("revert", "ok")]  # the failure itself was logged before the crash


def test_a_trial_whose_switch_never_happened_is_dropped(tmp_path: Path) -> None:
    paths = _host(tmp_path, None)
    paths.trial.write_bytes(dump(_trial(release="svc-1.2.0-3", previous="svc-1.1.0-2", external=False)))
    assert trial.recover_trial(paths) is None
    assert not paths.trial.exists() and os.readlink(paths.current) == "releases/svc-1.1.0-2"


def _gone(pid: int) -> bool:
    """The process no longer runs (it may linger as a zombie until its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_hooks_are_stopped_at_their_timeout_with_their_children(tmp_path: Path) -> None:
    import time

    from chiron.core.models import Hook
    from chiron.errors import EnvironmentProblem

    child = tmp_path / "child.pid"
    hook = Hook(argv=["sh", "-c", f"sleep 300 & echo $! > {child}; echo started; wait"], timeout=1)
    with pytest.raises(EnvironmentProblem, match=r"post_switch hook did not finish within 1 s \(stopped\): started"):
        activation.run_hook("post_switch", hook, dict(os.environ))
    pid = int(child.read_text())
    for _ in range(100):  # SIGKILL went to the whole group; its delivery is asynchronous
        if _gone(pid):
            break
        time.sleep(0.05)
    assert _gone(pid)
