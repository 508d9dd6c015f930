"""Shared fixtures: development keys, a loopback index of tiny wheels, and built appliances."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chiron.engines.build import BuildOptions, BuildResult, build
from chiron.trust.devkeys import init_dev_keys

from helpers import ENV_311, ENV_312, LocalIndex, make_wheel, write_spec

REPO = Path(__file__).resolve().parent.parent


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
