"""chiron benchmarks: each figure is measured side by side with its peers in the same run and
reported as a ratio. Run with `make bench`; results and commands are recorded in docs/benchmarks.md.

Sections (all by default; choose with --only):
  install  chiron install vs `pip install --no-index` vs `uv pip install --offline` (80 wheels)
  verify   chiron verify of a large payload vs hashlib (1 and all cores), openssl, sha256sum
  startup  ./chiron.pex --help and verify (small archive) vs the venv's `chiron --help`, as ratios;
           build cold/warm
  memory   peak RSS of verify and install of a 5 GiB appliance
  refresh  chiron mirror refresh (80 wheels): cold, no change, one changed wheel, one changed image
           layer (needs docker-registry and skopeo), each against a cold chiron build; delta sizes
  serve    chiron serve next to nginx (Debian's) on loopback: 50 clients downloading an appliance and a
           wheelhouse, index-page latency, RSS (benchmarks/serve.py)
  fleet    20 hosts upgrading at once from a loopback registry (chiron pull --have) vs each pulling
           the full appliance: bytes per host and fleet wall time (benchmarks/fleet.py)
  media    chiron receive of a 2 GiB appliance from another filesystem vs cp, cp + sync, cp + verify;
           chiron join of 4 volumes vs cat; peak RSS at 2 GiB and 256 MiB (benchmarks/media.py)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chiron.trust.devkeys import init_dev_keys

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import ENV_311, LocalIndex, make_wheel, write_spec  # noqa: E402

BIN = Path(sys.executable).parent
CHIRON = str(BIN / "chiron")
UV = shutil.which("uv", path=str(BIN)) or "uv"
RESULTS: list[tuple[str, str, str]] = []
SECTIONS = ("install", "startup", "verify", "memory", "refresh", "serve", "fleet", "media")


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
    rng = random.Random(42)
    names = [f"pkg{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        deps = tuple(names[j] for j in rng.sample(range(i + 1, count), min(3, count - i - 1)))
        _bench_wheel(directory, name, "1.0", deps, rng)
    return names


def _bench_wheel(directory: Path, name: str, version: str, deps: tuple[str, ...], rng: random.Random) -> Path:
    """One wheel of the wheelhouse's shape: 40 modules of source and a 100 KiB module."""
    source = "".join(f"def f{k}(x):\n    return x * {k} + {rng.random()!r}\n\n" for k in range(60))
    extra = {f"mod{m}.py": source for m in range(40)}
    return make_wheel(directory, name, version, deps=deps, payload=b"# " + rng.randbytes(50 << 10).hex().encode(),
                      extra_files=extra)  # fmt: skip


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
    from chiron.archive.reader import read_layout

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


def side_by_side(
    cmds: dict[str, tuple[list[str], dict[str, str] | None]], repeat: int
) -> dict[str, tuple[float, float]]:
    """Each command ``repeat`` times, interleaved (one run of each per round, so that a busy moment
    of the machine hits all of them alike): the median wall time and the median CPU time (user +
    system, from os.wait4) of each."""
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeat):
        for key, (cmd, env) in cmds.items():
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _pid, status, usage = os.wait4(proc.pid, 0)
            wall[key].append(time.perf_counter() - start)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
            cpu[key].append(usage.ru_utime + usage.ru_stime)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in cmds}


def bench_startup(work: Path, keys: Path) -> None:
    """Fixed costs, side by side: `chiron --help` from a venv is the yardstick; the small archive's
    verify should stay within 2x of it, and the appliance's own `--help` within 1.5x."""
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
    # The interpreter behind the venv, named directly: what the appliance's `/usr/bin/env python3`
    # finds on a host, without an `env` lookup through a version manager's shim (pyenv here).
    python = os.path.realpath(sys.executable)
    # "The venv" is the one pex made for the tool under PEX_ROOT: chiron and its runtime dependencies
    # only. The development .venv also holds the test dependencies, and securesystemslib imports
    # every signer backend it finds there (boto3 alone costs ~0.2 s): measured apart.
    (venv_chiron,) = (work / "pex-root-s" / "venvs").glob("**/bin/chiron")
    r = side_by_side(
        {
            "venv_help": ([str(venv_chiron), "--help"], None),
            "pex_help": ([str(app), "--help"], env),
            "py_pex_help": ([python, str(app), "--help"], env),
            "venv_verify": ([str(venv_chiron), "verify", str(app)], None),
            "pex_verify": ([str(app), "verify"], env),
            "dev_verify": ([CHIRON, "verify", str(app)], None),
        },
        repeat=9,
    )

    def row(key: str) -> str:
        return f"{r[key][0]:.3f} s (CPU {r[key][1]:.3f} s)"

    def ratio(key: str) -> str:
        return f"{r[key][0] / r['venv_help'][0]:.2f}x (CPU {r[key][1] / r['venv_help'][1]:.2f}x)"

    record("startup", "./chiron.pex --help, cold (empty PEX_ROOT: first run unpacks)", f"{cold_help:.3f} s")
    record("startup", "venv chiron --help (the yardstick; runtime deps only)", row("venv_help"))
    record("startup", "./chiron.pex --help (warm)", row("pex_help"))
    record("startup", "python3 chiron.pex --help (warm, interpreter named)", row("py_pex_help"))
    record("startup", "venv chiron verify, small archive", row("venv_verify"))
    record("startup", "./chiron.pex verify, same archive (warm)", row("pex_verify"))
    record("startup", "development .venv chiron verify (test deps installed)", row("dev_verify"))
    record("startup", "ratio venv verify / venv --help (target <= 2)", ratio("venv_verify"))
    record("startup", "ratio ./chiron.pex verify / venv --help", ratio("pex_verify"))
    record("startup", "ratio ./chiron.pex --help / venv --help (target <= 1.5)", ratio("pex_help"))
    record("startup", "ratio python3 chiron.pex --help / venv --help", ratio("py_pex_help"))
    record("build", "build a small appliance, cold cache (pex tool built)", f"{cold_t:.2f} s")
    record("build", "same build, warm cache (tool zip and wheels reused)", f"{warm_t:.2f} s")


def _build_time(spec: Path, out: Path, cache: Path) -> float:
    start = time.perf_counter()
    subprocess.run([CHIRON, "build", str(spec), "-o", str(out), "--tool-wheels", str(REPO / "build/tool-wheels"),
                    "--cache-dir", str(cache)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


PAYLOAD_PREFIXES = ("wheels/", "files/", "images/blobs/", "_archive/tool.zip")


def bench_refresh(work: Path, keys: Path) -> None:
    wheels = work / "rwheels"
    names = make_wheelhouse(wheels)
    index = LocalIndex(wheels)
    registry: subprocess.Popen[bytes] | None = None
    try:
        spec = write_spec(work / "rspec", keys=keys, index_url=index.url, requirements=[f"{n}>=1.0" for n in names],
                          environments=ENV_311)  # fmt: skip
        cache = work / "rcache"
        build_t, _ = timed([CHIRON, "build", str(spec), "-o", str(work / "rbuild.pex"), "--tool-wheels",
                            str(REPO / "build/tool-wheels"), "--cache-dir", str(cache)],
                           setup=lambda: shutil.rmtree(cache, ignore_errors=True))  # fmt: skip
        record("refresh", f"cold chiron build, {len(names)} wheels, tool zip built (median of 3)", f"{build_t:.2f} s")

        store = work / "store"
        index.requests.clear()
        cold_t, cold = _refresh(store, str(spec))
        record("refresh", "first refresh, empty store (tool zip built)", f"{cold_t:.2f} s")
        record("refresh", "  fetched (artifacts, bytes, index file requests)", _fetched(cold, index))

        same_t: list[float] = []
        for _ in range(3):
            index.requests.clear()
            t, same = _refresh(store)
            if same["changed"]:
                raise SystemExit("a refresh with nothing new upstream built a new version")
            same_t.append(t)
        no_change = statistics.median(same_t)
        pages = sum(n for p, n in index.requests.items() if p.startswith("/simple"))
        record("refresh", "no-change refresh (median of 3)", f"{no_change:.2f} s")
        record("refresh", "  fetched (artifacts, bytes, index file requests)", _fetched(same, index))
        record("refresh", "  index page / PEP 658 metadata requests", f"{pages} / {len(index.requests) - pages}")
        verdict = "met" if no_change < 0.1 * build_t else "NOT met"
        record("refresh", f"no-change / cold build (target < 10%: {verdict})", f"{no_change / build_t:.1%}")
        for step, seconds in _refresh_profile(store).items():
            if not step.startswith("skopeo"):  # no images yet
                record("refresh", f"  profile: {step}", f"{seconds:.2f} s")

        # One changed wheel: a new release of a package the spec allows (pkgNN>=1.0); pkg79 has no deps.
        new = _bench_wheel(wheels, names[-1], "1.1", (), random.Random(7))
        previous = Path(cold["appliance"])
        index.requests.clear()
        wheel_t, changed = _refresh(store, "--delta-from", str(previous))
        record("refresh", "one changed wheel, refresh + delta", f"{wheel_t:.2f} s")
        record("refresh", "  fetched (artifacts, bytes, index file requests)", _fetched(changed, index))
        _delta_report(changed, {f"wheels/{new.name}": new.stat().st_size}, "the new wheel")

        if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
            record("refresh", "one changed image layer", "skipped: needs docker-registry and skopeo")
            return
        address, registry = _start_registry(work / "registry")
        ref = f"{address}/bench/app:1"
        base = _layer(1)
        _push(_oci_image(work / "oci-v1", [base, _layer(2)]), ref)
        spec.write_text(spec.read_text() + f'\n[[images]]\nref = "{ref}"\n')
        img_t, first = _refresh(store)
        record("refresh", "spec gains a 2-layer image (whole image fetched)", f"{img_t:.2f} s")
        same_img_t, _same = _refresh(store)
        record("refresh", "no-change refresh with the image", f"{same_img_t:.2f} s")
        step = "skopeo (sources.images.fetch: inspect, copy to the store's oci/)"
        record("refresh", f"  profile: {step}", f"{_refresh_profile(store)[step]:.2f} s")
        _push(_oci_image(work / "oci-v2", [base, _layer(3)]), ref)  # same tag, second layer changed
        before = _blobs(store)
        index.requests.clear()
        layer_t, relayered = _refresh(store, "--delta-from", first["appliance"])
        added = {f"images/blobs/sha256/{d}": n for d, n in _blobs(store).items() if d not in before}
        record("refresh", "one changed image layer, refresh + delta", f"{layer_t:.2f} s")
        record("refresh", "  wheels fetched (artifacts, bytes, index file requests)", _fetched(relayered, index))
        record("refresh", "  image blobs fetched (new in the store's oci/)",
               f"{len(added)} blobs, {sum(added.values()):,} bytes")  # fmt: skip
        _delta_report(relayered, added, "the new layer, config and manifest")
    finally:
        index.close()
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)


def _refresh(store: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """Wall time and JSON report of one whole `chiron mirror refresh --json` command."""
    env = dict(os.environ, CHIRON_TOOL_WHEELS=str(REPO / "build/tool-wheels"))
    start = time.perf_counter()
    proc = subprocess.run([CHIRON, "mirror", "refresh", "--store", str(store), "--json", *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"chiron mirror refresh failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return elapsed, json.loads(proc.stdout)


def _fetched(report: dict[str, Any], index: LocalIndex) -> str:
    return f"{report['downloaded']}, {report['bytes_downloaded']:,} B, {index.file_requests()}"


def _refresh_profile(store: Path) -> dict[str, float]:
    """Where one more no-change refresh spends its time: cProfile's cumulative seconds per step."""
    import pstats

    prof = store.parent / "refresh.prof"
    env = dict(os.environ, CHIRON_TOOL_WHEELS=str(REPO / "build/tool-wheels"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "chiron", "mirror", "refresh", "--store",
                    str(store), "--json"], env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    total = time.perf_counter() - start
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]

    def cum(where: str, func: str) -> float:
        """Cumulative seconds of ``func`` in a chiron module or package (a path under src/chiron)."""
        return float(sum(v[3] for (f, _line, fn), v in stats.items() if f"/chiron/{where}" in f and fn == func))

    steps = {
        "pip resolution (sources.lock.resolve, a pip subprocess)": cum("sources/lock/resolve.py", "resolve"),
        "tool zip lookup: hash tool wheels, check the cached zip": cum("sources/toolcache.py", "cached_tool_zip"),
        "skopeo (sources.images.fetch: inspect, copy to the store's oci/)": cum("sources/images.py", "fetch"),
        "sha256 of whole files (core.fs.sha256_file: the tool zip, [[files]])": cum("core/fs.py", "sha256_file"),
    }
    refresh = cum("engines/mirror/refresh.py", "refresh")
    if not refresh:
        raise SystemExit("refresh profile: no chiron.engines.mirror refresh() in the profile (moved? update run.py)")
    return {
        "whole command under cProfile": total,
        "interpreter start, imports, CLI (outside refresh())": total - refresh,
        **steps,
        "rest of refresh() (spec, policy, trust, lock, store I/O)": refresh - sum(steps.values()),
    }


def _delta_report(report: dict[str, Any], expected: dict[str, int], what: str) -> None:
    """Full appliance vs delta, and whether the delta carries only ``expected`` plus metadata members."""
    from chiron.archive import delta

    d = delta.read(Path(report["delta"]))
    carried = [e for e in d.extents if e.carried]
    payload = {e.name: e.length for e in carried if e.name.startswith(PAYLOAD_PREFIXES)}
    meta = sum(e.length for e in carried if e.name not in payload)
    changed = sum(expected.values())
    record("refresh", "  full appliance / delta", f"{report['size']:,} B / {report['delta_size']:,} B "
           f"({report['delta_size'] / report['size']:.2%})")  # fmt: skip
    record("refresh", f"  changed content ({what}) + metadata members", f"{changed:,} B + {meta:,} B")
    only = "yes" if payload == expected else f"NO, also {sorted(set(payload) - set(expected))}"
    record("refresh", f"  carries only the changed payload: {only}; delta header", f"{d.data_offset:,} B")
    ratio = report["delta_size"] / (changed + meta)
    record("refresh", "  delta / (changed content + metadata members)", f"{ratio:.3f}x")
    for e in carried:
        if e.name not in payload:
            record("refresh", f"    metadata member {e.name}", f"{e.length:,} B")


def _blobs(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (store / "oci" / "blobs" / "sha256").iterdir()}


def _start_registry(directory: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Debian's docker-registry on a free loopback port (as tests/test_images.py runs it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory.mkdir(parents=True)
    config = directory / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{directory}/data\nhttp:\n  addr: 127.0.0.1:{port}\n")  # fmt: skip
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("docker-registry did not start listening")


def _layer(seed: int, kib: int = 8) -> tuple[bytes, str]:
    """A gzipped layer tar holding ``kib`` KiB of random bytes, and its diff_id (sha256 of the tar)."""
    data = random.Random(seed).randbytes(kib << 10)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"data/layer-{seed}.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0), f"sha256:{hashlib.sha256(buf.getvalue()).hexdigest()}"


def _oci_image(layout: Path, layers: list[tuple[bytes, str]]) -> Path:
    """A linux/amd64 OCI image layout with tag "1", written by hand (no docker needed)."""

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [d for _b, d in layers]}}
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(b, "application/vnd.oci.image.layer.v1.tar+gzip") for b, _d in layers],
    }
    entry = blob(json.dumps(manifest).encode(), manifest_type)
    entry["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


def _push(layout: Path, ref: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}"],
                   check=True)  # fmt: skip


def main() -> None:
    from datetime import UTC, datetime, timedelta

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--gib", type=float, default=2.0, help="payload size for the verify section")
    parser.add_argument("--memory-gib", type=float, default=5.0, help="payload size for the memory section")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if unknown := sections - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
    with tempfile.TemporaryDirectory(prefix="chiron-bench-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        init_dev_keys(keys, root_expires=timedelta(days=30), now=datetime.now(UTC))
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {os.uname().release}")
        if "install" in sections:
            bench_install(work, keys)
        if "startup" in sections:
            bench_startup(work, keys)
        if "verify" in sections:
            bench_verify(work, keys, args.gib)
        if "memory" in sections:
            bench_memory(work, keys, args.memory_gib)
        if "refresh" in sections:
            bench_refresh(work, keys)
        if "serve" in sections:
            from serve import bench_serve  # benchmarks/serve.py, beside this file

            bench_serve(work, record)
        if "fleet" in sections:
            from fleet import bench_fleet

            bench_fleet(work, keys, record)
        if "media" in sections:
            from media import bench_media

            bench_media(work, keys, record, args.gib)


if __name__ == "__main__":
    main()
