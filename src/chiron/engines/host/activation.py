"""Bringing a release into service (docs/host.md, "Activation"): its hooks, its Compose project and its
live check, each bounded by a timeout. What the trial does with the results is in ``trial``.

Before the switch, ``stage`` writes into the release's directory what activation needs later, even
after the appliance is gone: ``activation.json`` (the spec's ``[host]`` section) and ``compose.json``
(the Compose file with each service's image pinned to the signed image, by ID or by digest).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from chiron.core import compose as _compose
from chiron.core.fs import write_atomic
from chiron.core.hoststate import MAX_CHECK_OUTPUT, CheckResult, format_time, read_model
from chiron.core.models import ApplianceSpec, Hook, HostSection, LiveCheck
from chiron.core.text import printable
from chiron.engines.host.images import host_platform
from chiron.engines.host.paths import Paths, naming, now
from chiron.engines.host.state import write_model
from chiron.engines.verify import VerifiedAppliance
from chiron.errors import EnvironmentProblem
from chiron.sources import http as _http

ACTIVATION_FILE = "activation.json"  # releases/<id>/activation.json: the [host] section of its spec
COMPOSE_FILE = "compose.json"  # releases/<id>/compose.json: the Compose file with pinned images
_BODY_SHOWN = 200  # characters of an HTTP body quoted in a failed check's output


def clean(text: str, limit: int = MAX_CHECK_OUTPUT) -> str:
    """Output of a hook, the Compose CLI or the application, as chiron may print and record it: the
    end of it (the error is usually last), with every control character escaped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = printable(" | ".join(lines) or "(no output)")[1:-1]
    return joined if len(joined) <= limit else "..." + joined[-(limit - 3) :]


# ---------------------------------------------------------------- staging (before the switch)


def stage(spec: ApplianceSpec, appliance: VerifiedAppliance, slot: Path, images: str, registry: str | None) -> None:
    """Write activation.json and, with a Compose file, compose.json into the release's directory."""
    if not spec.host.activates and spec.host.pre_switch is None and spec.host.on_revert is None:
        return
    write_model(slot / ACTIVATION_FILE, spec.host, mode=0o644)
    if spec.host.compose is None:
        return
    where = f"{appliance.path}: files/{spec.host.compose}"
    doc = _compose.parse(appliance.read(f"files/{spec.host.compose}"), where)
    carried = {i["ref"]: i for i in appliance.manifest.get("images") or []}
    refs = _compose.check_carried(doc, sorted(carried), where)
    pins = {ref: _pin(appliance, carried[ref], images, registry) for ref in set(refs.values())}
    with naming(slot / COMPOSE_FILE, "cannot write"):
        write_atomic(slot / COMPOSE_FILE, _compose.pinned(doc, pins), mode=0o644)


def _pin(appliance: VerifiedAppliance, image: dict[str, object], mode: str, registry: str | None) -> str:
    """The reference that runs exactly the signed image: its ID (the config digest the Engine was
    checked to report at loading) or, for images pushed into a registry, the manifest's digest there."""
    manifests = image.get("manifests")
    digest = manifests.get(host_platform()) if isinstance(manifests, dict) else None
    if not isinstance(digest, str):
        raise EnvironmentProblem(f"image {image['ref']}: no manifest for this host's platform {host_platform()}")
    if mode == "push" and registry:
        return f"{registry.rstrip('/')}/{repository_path(str(image['ref']))}@{digest}"
    manifest = json.loads(appliance.read(f"images/blobs/sha256/{digest.partition(':')[2]}"))
    return str(manifest["config"]["digest"])


def repository_path(ref: str) -> str:
    """``team/app`` of ``registry.example:5000/team/app:1`` (no registry host, tag or digest)."""
    first, _, rest = ref.partition("/")
    path = rest if rest and ("." in first or ":" in first or first == "localhost") else ref
    path = path.split("@", 1)[0]
    head, _, last = path.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def activation_of(paths: Paths, rid: str | None) -> HostSection | None:
    """The ``[host]`` section a release was installed with; None for a release without activation (or
    installed by a chiron from before activation)."""
    if rid is None:
        return None
    return read_model(HostSection, paths.release(rid) / ACTIVATION_FILE)


# ---------------------------------------------------------------- running programs


@dataclass(frozen=True)
class Ran:
    code: int | None  # None: stopped at the timeout
    output: str  # cleaned (see ``clean``)


def run_bounded(argv: list[str], timeout: float, env: dict[str, str], cwd: Path | None = None) -> Ran:
    """Run ``argv`` without a shell in its own process group; at the timeout the whole group is
    killed (a hook's children too). Output goes to a temporary file, so a child left holding it
    cannot keep chiron waiting, and only its end is kept."""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=cwd, start_new_session=True
            )
        except OSError as exc:
            return Ran(127, clean(f"cannot run {argv[0]}: {exc.strerror}"))
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - 4 * MAX_CHECK_OUTPUT))
        return Ran(code, clean(out.read().decode("utf-8", "replace")))


def hook_env(paths: Paths, release: str | None, previous: str | None) -> dict[str, str]:
    """chiron's environment plus CHIRON_RELEASE (the release brought into service), CHIRON_PREVIOUS
    (the one it replaces, or empty) and that release's venv ``bin/`` first on PATH."""
    rel = str(paths.release(release)) if release else ""
    prev = str(paths.release(previous)) if previous else ""
    env = dict(os.environ, CHIRON_RELEASE=rel, CHIRON_PREVIOUS=prev, CHIRON_PREFIX=str(paths.prefix))
    if rel:
        env["PATH"] = f"{rel}/venv/bin{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def run_hook(name: str, hook: Hook, env: dict[str, str]) -> None:
    """A hook that exits other than 0, cannot start, or outlives its timeout is an EnvironmentProblem."""
    ran = run_bounded(list(hook.argv), hook.timeout, env)
    if ran.code is None:
        raise EnvironmentProblem(f"{name} hook did not finish within {hook.timeout} s (stopped): {ran.output}")
    if ran.code != 0:
        raise EnvironmentProblem(f"{name} hook failed (exit {ran.code}): {ran.output}")


# ---------------------------------------------------------------- Compose


def find_compose() -> list[str] | None:
    """The Compose CLI on this host: ``docker compose`` (v2) when the plugin answers, else
    ``docker-compose`` (v1); None when there is neither."""
    docker = shutil.which("docker")
    if docker is not None:
        ran = run_bounded([docker, "compose", "version"], 30, dict(os.environ))
        if ran.code == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def compose(paths: Paths, rid: str, project: str, action: str, timeout: int, env: dict[str, str]) -> None:
    """``up -d --remove-orphans`` (or ``down``) the release's pinned Compose file as ``project``."""
    cli = find_compose()
    if cli is None:
        raise EnvironmentProblem(
            "no Compose CLI found (docker compose, docker-compose)",
            hint="install the Compose plugin or Debian's docker-compose; 'chiron doctor' checks it",
        )
    file = paths.release(rid) / COMPOSE_FILE
    args = ["up", "-d", "--remove-orphans"] if action == "up" else ["down", "--remove-orphans"]
    ran = run_bounded([*cli, "-p", project, "-f", str(file), *args], timeout, env, cwd=file.parent)
    if ran.code is None:
        raise EnvironmentProblem(f"compose {action} of {rid} did not finish within {timeout} s: {ran.output}")
    if ran.code != 0:
        raise EnvironmentProblem(f"compose {action} of {rid} failed (exit {ran.code}): {ran.output}")


def has_compose(paths: Paths, rid: str | None) -> bool:
    return rid is not None and (paths.release(rid) / COMPOSE_FILE).is_file()


# ---------------------------------------------------------------- live check


def _attempt(check: LiveCheck, env: dict[str, str]) -> tuple[bool, str]:
    if check.command is not None:
        ran = run_bounded(list(check.command), check.timeout, env)
        if ran.code is None:
            return False, f"{check.command[0]} did not finish within {check.timeout:g} s: {ran.output}"
        return ran.code == 0, f"{check.command[0]} exited {ran.code}: {ran.output}"
    url = str(check.url)
    try:
        status, body = _http.live_get(url, check.timeout)
    except OSError as exc:
        return False, f"{url}: no answer ({exc})"
    text = body.decode("utf-8", "replace")
    shown = text[:_BODY_SHOWN]
    if status != check.status:
        return False, f"{url} answered HTTP {status}, not {check.status}: {shown}"
    if check.body is not None and check.body not in text:
        return False, f"{url} answered HTTP {status}, but without {check.body!r}: {shown}"
    return True, f"{url} answered HTTP {status}"


def live_check(check: LiveCheck, env: dict[str, str]) -> CheckResult:
    """Try until one attempt passes or the deadline passes; the result of the last attempt."""
    deadline = time.monotonic() + check.deadline
    attempts = 0
    while True:
        attempts += 1
        ok, output = _attempt(check, env)
        if ok or time.monotonic() + check.interval > deadline:
            return CheckResult(time=format_time(now()), ok=ok, attempts=attempts, output=clean(output))
        time.sleep(check.interval)
