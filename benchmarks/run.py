"""chiron benchmarks: each figure is measured side by side with its peers in the same run and
reported as a ratio. Run with `make bench`; results and commands are recorded in docs/benchmarks.md.

Sections (all by default; choose with --only):
  install  chiron install vs `pip install --no-index` vs `uv pip install --offline` (80 wheels)
  verify   chiron verify of a large payload vs hashlib (1 and all cores), openssl, sha256sum
  startup  ./chiron.pex --help and verify (small archive) vs the venv entry point; build cold/warm
  memory   peak RSS of verify and install of a 5 GiB appliance
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from chiron import _trust  # noqa: E402

from helpers import ENV_311, LocalIndex, make_wheel, write_spec  # noqa: E402

BIN = Path(sys.executable).parent
CHIRON = str(BIN / "chiron")
UV = shutil.which("uv", path=str(BIN)) or "uv"
RESULTS: list[tuple[str, str, str]] = []


def timed(cmd: list[str], *, env: dict[str, str] | None = None, repeat: int = 3, setup=None) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Median wall time over ``repeat`` runs, and the largest peak RSS (KiB) of that command alone
    (os.wait4 gives each child's own rusage)."""
    times, peak = [], 0
    for _ in range(repeat):
        if setup:
            setup()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}")
        peak = max(peak, usage.ru_maxrss)
    return statistics.median(times), peak


def record(section: str, what: str, value: str) -> None:
    RESULTS.append((section, what, value))
    print(f"{section:<8} {what:<58} {value}", flush=True)


def make_wheelhouse(directory: Path, count: int = 80) -> list[str]:
    """``count`` wheels shaped like real ones: many modules of source, a data file, a few dependencies."""
    import random

    rng = random.Random(42)
    names = [f"pkg{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        deps = tuple(names[j] for j in rng.sample(range(i + 1, count), min(3, count - i - 1)))
        source = "".join(f"def f{k}(x):\n    return x * {k} + {rng.random()!r}\n\n" for k in range(60))
        extra = {f"mod{m}.py": source for m in range(40)}
        make_wheel(directory, name, "1.0", deps=deps, payload=b"# " + rng.randbytes(50 << 10).hex().encode(),
                   extra_files=extra)  # fmt: skip
    return names


def bench_install(work: Path, keys: Path) -> None:
    wheels = work / "wheels"
    names = make_wheelhouse(wheels)
    index = LocalIndex(wheels)
    try:
        spec = write_spec(work / "spec", keys=keys, index_url=index.url, requirements=names, environments=ENV_311)
        app = work / "app.pex"
        subprocess.run([CHIRON, "build", str(spec), "-o", str(app), "--tool-wheels", str(REPO / "build/tool-wheels"),
                        "--cache-dir", str(work / "cache")], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        req = work / "req.txt"
        req.write_bytes(_requirements(app))
    finally:
        index.close()
    n = len(list(wheels.glob("*.whl")))
    prefix = work / "prefix"
    venv = work / "venv"

    def clean() -> None:
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)

    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    chiron_t, _ = timed([CHIRON, "install", str(app), "--prefix", str(prefix), "--root", str(keys / "1.root.json")],
                        setup=clean)  # fmt: skip
    pip_t, _ = timed(["sh", "-c", f"{sys.executable} -m venv {venv} && {venv}/bin/pip install -q --isolated "
                      f"--no-index --find-links {wheels} --require-hashes -r {req}"], setup=clean, env=env)  # fmt: skip
    uv_t, _ = timed(["sh", "-c", f"{UV} venv -q {venv} && {UV} pip install -q --offline --no-cache --compile-bytecode "
                     f"--python {venv}/bin/python --no-index --find-links {wheels} --require-hashes -r {req}"],
                    setup=clean)  # fmt: skip
    clean()
    record("install", f"{n} wheels: chiron install (verify+venv+health+switch)", f"{chiron_t:.2f} s")
    record("install", "pip install --no-index --require-hashes (compiles .pyc)", f"{pip_t:.2f} s")
    record("install", "uv pip install --offline --compile-bytecode", f"{uv_t:.2f} s")
    record("install", "ratio chiron / uv (target <= 1.2)", f"{chiron_t / uv_t:.2f}x")
    record("install", "ratio pip / chiron (target >= 3)", f"{pip_t / chiron_t:.2f}x")


def _requirements(app: Path) -> bytes:
    from chiron._archive import read_layout

    layout = read_layout(app)
    (m,) = [m for m in layout.members if m.name.startswith("lock/requirements-")]
    with app.open("rb") as f:
        return os.pread(f.fileno(), m.length, m.offset)


def _hash_file_threads(path: Path, workers: int) -> None:
    size = path.stat().st_size
    part = -(-size // workers)

    def one(i: int) -> str:
        h = hashlib.sha256()
        with path.open("rb") as f:
            f.seek(i * part)
            left = min(part, size - i * part)
            while left > 0:
                chunk = f.read(min(4 << 20, left))
                h.update(chunk)
                left -= len(chunk)
        return h.hexdigest()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(workers)))


def bench_verify(work: Path, keys: Path, gib: float) -> None:
    wheels = work / "vwheels"
    make_wheel(wheels, "beta", "1.0")
    index = LocalIndex(wheels)
    payload = work / "payload.bin"
    with payload.open("wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(int(gib * 1024)):
            f.write(block)
    try:
        spec = write_spec(work / "vspec", keys=keys, index_url=index.url, requirements=["beta"], environments=ENV_311,
                          extra=f'[[files]]\nsrc = "{payload}"\ndest = "payload.bin"\n')  # fmt: skip
        app = work / "big.pex"
        subprocess.run([CHIRON, "build", str(spec), "-o", str(app), "--tool-wheels", str(REPO / "build/tool-wheels"),
                        "--cache-dir", str(work / "cache")], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    finally:
        index.close()
    payload.unlink()
    size = app.stat().st_size
    gibs = size / (1 << 30)
    env = dict(os.environ, PEX_ROOT=str(work / "pex-root"))
    subprocess.run(["cat", str(app)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    v_t, rss = timed([str(app), "verify", "--root", str(keys / "1.root.json")], env=env)
    small = work / "small.pex"
    fixed = timed([str(small), "verify"], env=env)[0] if small.exists() else 0.0
    t1 = _py_time(lambda: _hash_file_threads(app, 1))
    t2 = _py_time(lambda: _hash_file_threads(app, os.cpu_count() or 2))
    o_t, _ = timed(["openssl", "dgst", "-sha256", str(app)])
    s_t, _ = timed(["sha256sum", str(app)], repeat=1)
    record("verify", f"chiron verify, {gibs:.2f} GiB warm ({gibs / v_t:.2f} GiB/s)", f"{v_t:.2f} s")
    record("verify", f"hashlib sha256 1 thread ({gibs / t1:.2f} GiB/s)", f"{t1:.2f} s")
    record("verify", f"hashlib sha256 {os.cpu_count()} threads ({gibs / t2:.2f} GiB/s)", f"{t2:.2f} s")
    record("verify", f"openssl dgst -sha256 ({gibs / o_t:.2f} GiB/s)", f"{o_t:.2f} s")
    record("verify", f"sha256sum ({gibs / s_t:.2f} GiB/s)", f"{s_t:.2f} s")
    record("verify", "ratio chiron / all-core hashlib (target <= 1.25)", f"{v_t / t2:.2f}x")
    if fixed:
        record("verify", "same, less the fixed cost of verifying a small archive", f"{(v_t - fixed) / t2:.2f}x")
    record("verify", "ratio sha256sum / chiron", f"{s_t / v_t:.2f}x")
    record("verify", "peak RSS of the verify run (target < 200 MiB)", f"{rss / 1024:.0f} MiB")


def bench_memory(work: Path, keys: Path, gib: float) -> None:
    """Peak RSS of verify and install for a large appliance (a sparse payload: RSS does not depend on
    the bytes' values)."""
    wheels = work / "mwheels"
    make_wheel(wheels, "beta", "1.0")
    index = LocalIndex(wheels)
    payload = work / "sparse.bin"
    with payload.open("wb") as f:
        f.truncate(int(gib * (1 << 30)))
    try:
        spec = write_spec(work / "mspec", keys=keys, index_url=index.url, requirements=["beta"], environments=ENV_311,
                          extra=f'[[files]]\nsrc = "{payload}"\ndest = "payload.bin"\n')  # fmt: skip
        app = work / "huge.pex"
        subprocess.run([CHIRON, "build", str(spec), "-o", str(app), "--tool-wheels", str(REPO / "build/tool-wheels"),
                        "--cache-dir", str(work / "cache")], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    finally:
        index.close()
        payload.unlink()
    env = dict(os.environ, PEX_ROOT=str(work / "pex-root-m"))
    size = app.stat().st_size / (1 << 30)
    _t, v_rss = timed([str(app), "verify"], env=env, repeat=1)
    _t, i_rss = timed([str(app), "install", "--prefix", str(work / "mprefix")], env=env, repeat=1)
    record("memory", f"peak RSS, verify of a {size:.1f} GiB appliance (target < 200 MiB)", f"{v_rss / 1024:.0f} MiB")
    record("memory", "peak RSS, install of the same appliance", f"{i_rss / 1024:.0f} MiB")
    app.unlink()


def _py_time(fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_startup(work: Path, keys: Path) -> None:
    wheels = work / "swheels"
    make_wheel(wheels, "beta", "1.0")
    index = LocalIndex(wheels)
    try:
        spec = write_spec(work / "sspec", keys=keys, index_url=index.url, requirements=["beta"], environments=ENV_311)
        app = work / "small.pex"
        cold_t = _build_time(spec, app, work / "scache")
        warm_t = _build_time(spec, app, work / "scache")
    finally:
        index.close()
    env = dict(os.environ, PEX_ROOT=str(work / "pex-root-s"))
    cold_help, _ = timed([str(app), "--help"], env=env, setup=lambda: shutil.rmtree(work / "pex-root-s", True))
    pex_help, _ = timed([str(app), "--help"], env=env, repeat=5)
    venv_help, _ = timed([CHIRON, "--help"], repeat=5)
    pex_verify, _ = timed([str(app), "verify"], env=env, repeat=5)
    venv_verify, _ = timed([CHIRON, "verify", str(app)], repeat=5)
    record("startup", "./chiron.pex --help, cold (empty PEX_ROOT: first run unpacks)", f"{cold_help:.3f} s")
    record("startup", "./chiron.pex --help (warm; target < 0.5 s)", f"{pex_help:.3f} s")
    record("startup", "venv chiron --help", f"{venv_help:.3f} s")
    record("startup", "./chiron.pex verify, small archive (warm)", f"{pex_verify:.3f} s")
    record("startup", "venv chiron verify, same archive", f"{venv_verify:.3f} s")
    record("build", "build a small appliance, cold cache (pex tool built)", f"{cold_t:.2f} s")
    record("build", "same build, warm cache (tool zip and wheels reused)", f"{warm_t:.2f} s")


def _build_time(spec: Path, out: Path, cache: Path) -> float:
    start = time.perf_counter()
    subprocess.run([CHIRON, "build", str(spec), "-o", str(out), "--tool-wheels", str(REPO / "build/tool-wheels"),
                    "--cache-dir", str(cache)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    from datetime import UTC, datetime, timedelta

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="install,startup,verify,memory", help="comma-separated sections")
    parser.add_argument("--gib", type=float, default=2.0, help="payload size for the verify section")
    parser.add_argument("--memory-gib", type=float, default=5.0, help="payload size for the memory section")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="chiron-bench-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        _trust.init_dev_keys(keys, root_expires=timedelta(days=30), now=datetime.now(UTC))
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {os.uname().release}")
        if "install" in sections:
            bench_install(work, keys)
        if "startup" in sections:
            bench_startup(work, keys)
        if "verify" in sections:
            bench_verify(work, keys, args.gib)
        if "memory" in sections:
            bench_memory(work, keys, args.memory_gib)


if __name__ == "__main__":
    main()
