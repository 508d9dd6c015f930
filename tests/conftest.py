"""Shared fixtures: development keys, a loopback index of tiny wheels, and built appliances."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chiron.engines.build import BuildOptions, BuildResult, build
from chiron.trust.devkeys import init_dev_keys

from helpers import ENV_311, ENV_312, LocalIndex, LocalRegistry, make_wheel, write_spec

REPO = Path(__file__).resolve().parent.parent
BASE, APP = "chiron-test/busybox:1", "chiron-test/app:1"

# `make test` sets CHIRON_REQUIRE_COMPONENTS=1 once tests/provision.py found every system component the tests use
# (and CI runs `make test`): then a test that skips is a failure, so no run passes with the Docker Engine,
# SoftHSM2, faketime... silently unused. Running pytest by hand, without it, skips as before.
REQUIRE_COMPONENTS = os.environ.get("CHIRON_REQUIRE_COMPONENTS") == "1"


def _lacks_cap_sys_admin() -> bool:
    """Mounting a tmpfs needs CAP_SYS_ADMIN (root, outside an unprivileged container)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return not int(line.split()[1], 16) & (1 << 21)
    return True


# The skips that stay legitimate with every component present: (regex on the skip reason, when, why).
ALLOWED_SKIPS: tuple[tuple[str, Callable[[], bool], str], ...] = (
    # test_host/test_ops disk-full tests: no package can give a non-root user the right to mount.
    ("cannot mount a small tmpfs", _lacks_cap_sys_admin, "mounting needs CAP_SYS_ADMIN, which this process lacks"),
    # Debian 12 has no python3.12 package; the machine's pyenv (CI's) has one, and there the test runs.
    (r"NO PYTHON 3\.12", lambda: True, "no Python 3.12 interpreter on this machine, and no package provides one"),
)


def _required_skip(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason of a skip that must count as a failure, or None."""
    if not (REQUIRE_COMPONENTS and report.skipped) or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
    if any(re.search(pattern, reason) and allowed() for pattern, allowed, _why in ALLOWED_SKIPS):
        return None
    return reason


def _fail_required_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    reason = _required_skip(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped although CHIRON_REQUIRE_COMPONENTS=1 (make test provisioned every component): {reason}\n"
            "install what it names (tests/provision.py), or add the skip to ALLOWED_SKIPS in tests/conftest.py "
            "if it is legitimate even with every component present"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_required_skip(report)  # setup (skipif marks, skipping fixtures), call and teardown alike
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_required_skip(report)  # a module-level skip or importorskip
    return report


def pytest_report_header() -> str | None:
    if REQUIRE_COMPONENTS:
        return "CHIRON_REQUIRE_COMPONENTS=1: a skipped test fails, unless tests/conftest.py ALLOWED_SKIPS allows it"
    return None


@pytest.fixture(scope="session")
def tool_wheels() -> Path:
    """chiron's own wheels (made by `make tool-wheels`); the tool zip is built from them offline."""
    path = Path(os.environ.get("CHIRON_TOOL_WHEELS", REPO / "build" / "tool-wheels"))
    if not any(path.glob("chiron-*.whl")):
        pytest.fail(f"{path} holds no chiron wheel: run the tests with 'make test' (it runs 'make tool-wheels')")
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys") / "dev"
    init_dev_keys(directory, root_expires=timedelta(days=365), now=datetime.now(UTC))
    return directory


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated key set: signatures by it must never be accepted for `keys`."""
    directory = tmp_path_factory.mktemp("keys") / "other"
    init_dev_keys(directory, root_expires=timedelta(days=365), now=datetime.now(UTC))
    return directory


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real wheels: a pure package with a dependency, and a compiled-style one per CPython."""
    d = tmp_path_factory.mktemp("wheelhouse")
    make_wheel(d, "alpha", "1.0", deps=("beta>=1",))
    make_wheel(d, "beta", "1.0")
    make_wheel(d, "beta", "1.1", license="Apache-2.0")
    make_wheel(d, "gamma", "2.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    make_wheel(d, "gamma", "2.0", tag="cp312-cp312-manylinux_2_17_x86_64")
    return d


@pytest.fixture(scope="session")
def index(wheelhouse: Path) -> LocalIndex:
    idx = LocalIndex(wheelhouse)
    yield idx  # type: ignore[misc]
    idx.close()


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def do_build(
    spec: Path, out: Path, tool_wheels: Path, cache: Path, *, fmt: str = "pex", epoch: int | None = None
) -> BuildResult:
    return build(
        BuildOptions(
            spec=spec,
            output=out,
            tool_wheels=tool_wheels,
            cache_dir=cache,
            tool_format=fmt,  # type: ignore[arg-type]
            source_date_epoch=epoch,
            show_progress=False,
            # Fixtures of the verifier's and the host's tests build expired appliances on purpose; build's
            # own refusal of them is tested in test_build_verify.
            allow_expired=True,
        )
    )


@pytest.fixture(scope="session")
def good_spec(tmp_path_factory: pytest.TempPathFactory, keys: Path, index: LocalIndex) -> Path:
    return write_spec(
        tmp_path_factory.mktemp("spec"),
        keys=keys,
        index_url=index.url,
        requirements=["alpha==1.0", "gamma==2.0"],
        environments=ENV_311 + ENV_312,
    )


@pytest.fixture(scope="session")
def appliance(
    tmp_path_factory: pytest.TempPathFactory, good_spec: Path, tool_wheels: Path, session_cache: Path
) -> Path:
    """One good pex appliance for the many read-only tests (tamper tests copy it)."""
    out = tmp_path_factory.mktemp("dist") / "chiron.pex"
    do_build(good_spec, out, tool_wheels, session_cache)
    return out


@pytest.fixture()
def upstream(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A loopback index a test adds releases to: alpha 1.0 (needs beta>=1) and beta 1.0."""
    wheels = tmp_path / "upstream"
    make_wheel(wheels, "alpha", "1.0", deps=("beta>=1",))
    make_wheel(wheels, "beta", "1.0")
    idx = LocalIndex(wheels)
    yield idx
    idx.close()


@pytest.fixture(scope="session")
def tool_cache(tool_wheels: Path, session_cache: Path) -> Path:
    """The session cache's tool zip for a CPython 3.11-only spec (what the mirror tests use), built once."""
    import tempfile

    from chiron.core.models import TargetEnvironment
    from chiron.sources.tool import platforms_for
    from chiron.sources.toolcache import cached_tool_zip

    envs = [TargetEnvironment(name="cp311", python_version="3.11", platforms=["manylinux_2_17_x86_64"])]
    with tempfile.TemporaryDirectory() as tmp:
        cached_tool_zip(
            fmt="pex",
            wheels=tool_wheels,
            shebang="/usr/bin/env python3",
            platforms=platforms_for("pex", envs)[0],
            cache_dir=session_cache,
            work=Path(tmp),
        )
    return session_cache / "tool"


@pytest.fixture()
def seeded(tool_cache: Path):  # type: ignore[no-untyped-def]
    """Make a new mirror store holding the session's cached tool zip (a pex costs ~10 s to build)."""

    def make(store: Path) -> Path:
        shutil.copytree(tool_cache, store / "artifacts" / "tool", dirs_exist_ok=True)
        return store

    return make


@pytest.fixture()
def pex_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "pex-root"
    monkeypatch.setenv("PEX_ROOT", str(root))
    return root


def copy(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o755)
    return dest


# ---------------------------------------------------------------- registries and container images


def start_registry(root: Path, htpasswd: Path | None = None, tls: tuple[Path, Path] | None = None) -> LocalRegistry:
    """Debian's docker-registry on a free loopback port (skips the test where it is not installed)."""
    if shutil.which("docker-registry") is None:
        pytest.skip("NO docker-registry: .ci/run installs the docker-registry package")
    return LocalRegistry(root, htpasswd, tls)


@pytest.fixture(scope="session")
def engine():  # type: ignore[no-untyped-def]
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        pytest.skip(
            f"NO DOCKER ENGINE ({exc.__class__.__name__}): start dockerd --bridge=none --iptables=false "
            "(.ci/run does) to run the image tests"
        )
    if shutil.which("skopeo") is None:
        pytest.skip("NO SKOPEO: .ci/run installs it")
    return client


@pytest.fixture(scope="session")
def local_images(engine, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("img")
    rootfs = tmp / "rootfs.tar"
    subprocess.run([str(REPO / "images" / "busybox" / "rootfs.sh"), str(rootfs)], check=True)
    subprocess.run(["docker", "import", str(rootfs), BASE], check=True, capture_output=True)
    subprocess.run(
        ["docker", "build", "-q", "-t", APP, str(REPO / "images" / "app")],
        check=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return BASE, APP


@pytest.fixture(scope="session")
def registry(local_images, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A registry holding the two test images (busybox:1, app:1): the source the image tests build from."""
    served = start_registry(tmp_path_factory.mktemp("registry"))
    address = served.address
    for ref in local_images:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"docker-daemon:{ref}",
                f"docker://{address}/{ref.split('/', 1)[1]}",
            ],
            check=True,
        )
    yield address
    served.stop()


def image_spec(tmp: Path, keys: Path, index_url: str, images: str, name: str = "svc", version: str = "1.0.0") -> Path:
    return write_spec(
        tmp,
        keys=keys,
        index_url=index_url,
        requirements=["beta==1.0"],
        environments=ENV_311,
        name=name,
        version=version,
        extra=images,
    )


def images_toml(refs: list[str], source: str = "registry") -> str:
    return "".join(f'[[images]]\nref = "{r}"\nsource = "{source}"\n' for r in refs)


@pytest.fixture(scope="session")
def image_appliance(registry: str, keys: Path, index, tool_wheels: Path, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("imgapp")
    refs = [f"{registry}/busybox:1", f"{registry}/app:1"]
    spec = image_spec(tmp / "s", keys, index.url, images_toml(refs))
    return do_build(spec, tmp / "images.pex", tool_wheels, tmp / "cache").output
