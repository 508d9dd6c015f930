#!/usr/bin/env python3
"""Bring up what the tests need, or say what is missing: `make test` runs this before anything else.

As root with apt-get, it installs the missing Debian packages below (an apt-get update first, only if
something is missing) and starts a Docker Engine without a bridge network if none answers. What it cannot
bring up (not root, no apt-get) makes it exit 1 with one message naming each missing piece and how to get
it. With everything present it only looks (a few file checks and one `docker version`) and exits 0, after
which `make test` runs pytest with CHIRON_REQUIRE_COMPONENTS=1: a test that skips for want of a component
then fails (tests/conftest.py).

Standard library only: it runs on the system Python, before .venv exists.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# How the engine is started when none answers: no bridge network, so containers get no network of their own
# and all test traffic stays on 127.0.0.1.
DOCKERD = ("dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false")
DOCKERD_LOG = Path("/var/log/chiron-test-dockerd.log")
DOCKERD_WAIT_S = 60
# Root's commands live in sbin, which a non-root PATH often lacks.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _static_busybox() -> bool:
    """images/busybox/rootfs.sh needs a statically linked busybox (busybox-static), not the dynamic one."""
    busybox = _which("busybox")
    if busybox is None:
        return False
    return subprocess.run(["ldd", busybox], capture_output=True).returncode != 0


STATIC_BUSYBOX = (_static_busybox, "a statically linked busybox")


@dataclass(frozen=True)
class Package:
    """A Debian package the tests use: what shows it is installed, and which tests need it."""

    name: str
    provides: tuple[str, ...]  # commands (looked up on PATH, then sbin) or absolute paths
    used_by: str
    check: tuple[Callable[[], bool], str] | None = None  # an extra test when a file's presence is not enough

    def absent(self) -> list[str]:
        """What of the package is not found: commands, files, or what the extra check wants."""
        gone = [p for p in self.provides if not (Path(p).exists() if p.startswith("/") else _which(p))]
        if not gone and self.check is not None and not self.check[0]():
            gone.append(self.check[1])
        return gone

    def present(self) -> bool:
        return not self.absent()

    def problem(self) -> str:
        return f"{self.name} (Debian package), for {self.used_by}: {', '.join(self.absent())} not found"


# Everything the tests need from the system, one package per line.
PACKAGES = (
    Package("openssh-client", ("ssh-keygen",), "the detached-signature tests (ssh-keygen -Y verify)"),
    Package("openssl", ("openssl",), "the docs' alternative signature check"),
    Package("faketime", ("faketime",), "the back-dated-clock tests"),
    Package("softhsm2", ("softhsm2-util", "/usr/lib/softhsm/libsofthsm2.so"), "the HSM key tests (PKCS#11 token)"),
    Package("opensc", ("pkcs11-tool",), "the HSM key tests (pkcs11-tool)"),
    Package("docker.io", ("dockerd",), "the image tests (the Docker Engine)"),
    Package("docker-registry", ("docker-registry",), "the image tests (a registry on 127.0.0.1)"),
    Package("skopeo", ("skopeo",), "the image tests (copying images)"),
    Package("busybox-static", ("busybox",), "the image tests (the test images' root filesystem)", STATIC_BUSYBOX),
    Package("apache2-utils", ("htpasswd",), "the authenticated-registry tests (htpasswd)"),
    Package("docker-compose", ("docker-compose",), "the activation tests (the Compose CLI)"),
    Package("curl", ("curl",), "the resumed-download tests (curl -C -)"),
    Package("squashfs-tools", ("mksquashfs",), "the media tests (a disc image that fails with an I/O error)"),
    Package("xorriso", ("xorriso",), "the runbook tests (media-and-diodes.md makes and reads disc images)"),
    Package("chromium", ("/usr/bin/chromium",), "the real-browser tests of the report and the service's pages"),
    Package("chromium-driver", ("/usr/bin/chromedriver",), "the real-browser tests (WebDriver for chromium)"),
    Package("jq", ("jq",), "the runbook tests (fleet-through-registry.md pipes skopeo inspect into jq)"),
)


def _which(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path=os.pathsep.join(SBIN))


def _engine_problem() -> str | None:
    """None when a Docker Engine answers, else what `docker version` said (it exits 1 without a server)."""
    docker = _which("docker")
    if docker is None:
        return "no docker command"
    proc = subprocess.run([docker, "version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"docker version exited {proc.returncode}"


def _apt_install(names: list[str]) -> str | None:
    """Install the packages with apt-get; None on success, else the end of apt-get's output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_lock = ("-o", "DPkg::Lock::Timeout=300")  # a fresh machine may be running its own apt jobs
    failures: list[str] = []
    # An update that fails (one unreachable extra source) need not stop the install: only the install's result counts.
    for args in (
        ["apt-get", *wait_lock, "update", "-qq"],
        ["apt-get", *wait_lock, "install", "-y", "-qq", "--no-install-recommends", *names],
    ):
        proc = subprocess.run(args, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
            failures.append(f"`{' '.join(args)}` exited {proc.returncode}:\n    " + "\n    ".join(tail))
    return "\n  ".join(failures) if proc.returncode != 0 else None


def _start_engine() -> str | None:
    """Start dockerd in the background (it outlives make) and wait for it; None once it answers."""
    dockerd = _which("dockerd")
    if dockerd is None:
        return "no dockerd command"
    print(f"provision: no Docker Engine answers; starting {' '.join(DOCKERD)} (log: {DOCKERD_LOG})", flush=True)
    with open(DOCKERD_LOG, "ab") as log:
        start = log.tell()  # earlier runs' lines stay above
        proc = subprocess.Popen(
            [dockerd, *DOCKERD[1:]], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + DOCKERD_WAIT_S
    while (problem := _engine_problem()) is not None:
        if proc.poll() is not None or time.monotonic() > deadline:
            state = (
                f"exited {proc.returncode}"
                if proc.returncode is not None
                else f"gave no answer in {DOCKERD_WAIT_S} s (pid {proc.pid} left running)"
            )
            with open(DOCKERD_LOG, "rb") as log:
                log.seek(start)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
            return f"dockerd {state} ({problem}); end of {DOCKERD_LOG}:\n    " + "\n    ".join(tail)
        time.sleep(1)
    return None


def main() -> int:
    can_install = os.geteuid() == 0 and _which("apt-get") is not None
    missing = [p for p in PACKAGES if not p.present()]
    problems: list[str] = []
    if missing and can_install:
        names = [p.name for p in missing]
        print(f"provision: installing {' '.join(names)} with apt-get (a minute or two)", flush=True)
        failure = _apt_install(names)
        missing = [p for p in missing if not p.present()]
        if missing:
            problems.append(
                f"apt-get failed: {failure}"
                if failure
                else "apt-get installed them, but these are still not found (PATH?):"
            )
    problems += [p.problem() for p in missing]

    engine = _engine_problem()
    # Only the local default engine is ours to start: DOCKER_HOST names one that someone else runs.
    if engine is not None and can_install and not os.environ.get("DOCKER_HOST") and _which("dockerd"):
        engine = _start_engine()
    if engine is not None:
        problems.append(f"a Docker Engine that answers, for the image tests: {engine}")

    if not problems:
        print(f"provision: the {len(PACKAGES)} packages the tests use are installed and a Docker Engine answers")
        return 0
    why = "not root" if os.geteuid() != 0 else "no apt-get" if not can_install else "provisioning failed"
    out = [f"make test: stopped before the tests ({why}); missing:"]
    out += [f"  - {problem}" for problem in problems]
    if not can_install:
        out.append("To get them, run `make test` as root on Debian or Ubuntu: it installs them and starts the engine.")
    out.append("Or, as root, by hand:")
    if missing:
        out.append(f"    apt-get update && apt-get install --no-install-recommends {' '.join(p.name for p in missing)}")
    if engine is not None and "permission denied" in engine:
        out.append(f"    usermod -aG docker {pwd.getpwuid(os.getuid()).pw_name}   # access to the running engine")
    elif engine is not None:
        out.append(f"    {' '.join(DOCKERD)} > {DOCKERD_LOG} 2>&1 &")
    out.append("To run the tests without them (those that need them skip): make tool-wheels && .venv/bin/pytest")
    print("\n".join(out), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
