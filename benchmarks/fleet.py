"""The fleet section of benchmarks/run.py: 20 hosts upgrading at once through a loopback registry.

Version N carries 12 wheels and an image of two layers (32 MiB base, 4 MiB app); N+1 changes one wheel
and the app layer. Both are published to Debian's docker-registry on 127.0.0.1. Each of 20 pull
targets holds N and runs `chiron pull oci://...:N+1 --have N.pex` at the same moment as the others;
the same 20 then pull N+1 with nothing held, as every host copying the full appliance would. Reported:
bytes fetched per host (from the registry's access log and from chiron's report) against the full
appliance and against the changed content, and the fleet's wall time both ways.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from helpers import ENV_311, LocalIndex, LocalRegistry, make_wheel, write_spec

HOSTS = 20


def _appliance(work: Path, keys: Path, wheels: LocalIndex, version: str, beta: str, app_seed: int, epoch: int) -> Path:
    import run  # the image helpers of the refresh section

    layout = run._oci_image(work / f"layout-{version}", [run._layer(1, 32 << 10), run._layer(app_seed, 4 << 10)])
    index = json.loads((layout / "index.json").read_text())  # the layout names the image "1": name it as the spec does
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "bench/app:1"
    (layout / "index.json").write_text(json.dumps(index))
    images = f'[[images]]\nref = "bench/app:1"\nsource = "oci"\npath = "{layout}"\n'
    reqs = [f"w{i:02d}==1.0" for i in range(11)] + [f"beta=={beta}"]
    spec = write_spec(work / f"spec-{version}", keys=keys, index_url=wheels.url, requirements=reqs, version=version,
                      environments=ENV_311, extra=images)  # fmt: skip
    out = work / f"demo-{version}.pex"
    subprocess.run([run.CHIRON, "build", str(spec), "-o", str(out), "--cache-dir", str(work / "cache"),
                    "--tool-wheels", str(run.REPO / "build/tool-wheels"),
                    "--source-date-epoch", str(epoch)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def _fleet(argv_for: Callable[[Path], list[str]], hosts: list[Path]) -> tuple[float, list[dict[str, object]]]:
    """Start one pull per host at once; the wall time until the last ends, and each JSON report."""
    start = time.perf_counter()
    procs = [subprocess.Popen(argv_for(h), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for h in hosts]
    outs = [p.communicate() for p in procs]
    seconds = time.perf_counter() - start
    for p, (_o, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"fleet pull failed ({p.returncode}): {err.decode()[-500:]}")
    return seconds, [json.loads(o) for o, _e in outs]


def bench_fleet(work: Path, keys: Path, record: Callable[[str, str, str], None]) -> None:
    import run

    if shutil.which("docker-registry") is None:
        record("fleet", "skipped", "docker-registry is not installed")
        return
    work = work / "fleet"
    wheels = work / "wheels"
    rng = random.Random(7)
    for i in range(11):
        make_wheel(wheels, f"w{i:02d}", "1.0", payload=b"# " + rng.randbytes(128 << 10).hex().encode())
    make_wheel(wheels, "beta", "1.0", payload=b"# " + rng.randbytes(128 << 10).hex().encode())
    make_wheel(wheels, "beta", "1.1", payload=b"# " + rng.randbytes(128 << 10).hex().encode())
    index = LocalIndex(wheels)
    registry = LocalRegistry(work / "registry")
    try:
        now = int(time.time())
        old = _appliance(work, keys, index, "1.0.0", "1.0", 2, now)
        new = _appliance(work, keys, index, "1.1.0", "1.1", 3, now + 5)
        target = f"oci://{registry.address}/fleet/demo"
        for archive in (old, new):
            subprocess.run([run.CHIRON, "publish", str(archive), target, "--images", "skip", "--json"], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        from chiron.archive.delta import extents

        held = {sha for *_x, sha in extents(old)}
        changed = sum(length for _n, _o, length, sha in extents(new) if sha not in held)
        size = new.stat().st_size
        hosts = []
        for i in range(HOSTS):
            host = work / "hosts" / f"h{i:02d}"
            host.mkdir(parents=True)
            (host / "have.pex").hardlink_to(old)
            hosts.append(host)
        record("fleet", f"appliance N+1: one wheel and one image layer changed, {HOSTS} hosts", f"{size:,} B")
        record("fleet", "changed content (blobs N+1 has and N has not)", f"{changed:,} B")

        def delta_pull(h: Path) -> list[str]:
            return [run.CHIRON, "pull", f"{target}:1.1.0", "-o", str(h / "new.pex"), "--have", str(h / "have.pex"),
                    "--staging", str(h / "staging"), "--json"]  # fmt: skip

        def full_pull(h: Path) -> list[str]:
            return [run.CHIRON, "pull", f"{target}:1.1.0", "-o", str(h / "full.pex"), "--staging",
                    str(h / "staging"), "--json"]  # fmt: skip

        mark = len(registry.requests("GET"))
        delta_s, reports = _fleet(delta_pull, hosts)
        served = sum(n for _p, _s, n in registry.requests("GET")[mark:])
        fetched = max(int(r["fetched_bytes"]) for r in reports)  # type: ignore[call-overload]
        record("fleet", "bytes fetched per host, holding N (chiron's report, max)", f"{fetched:,} B")
        record("fleet", "blob bytes the registry served the fleet / hosts (access log)", f"{served // HOSTS:,} B")
        record("fleet", "per host: fetched / changed content", f"**{fetched / changed:.2f}x** (goal ≤ 1.1x)")
        record("fleet", "per host: full appliance / fetched", f"{size / fetched:.0f}x less")
        mark = len(registry.requests("GET"))
        full_s, _reports = _fleet(full_pull, hosts)
        served_full = sum(n for _p, _s, n in registry.requests("GET")[mark:])
        record("fleet", f"fleet wall time, {HOSTS} hosts pulling only what they lack", f"{delta_s:.2f} s")
        record("fleet", f"fleet wall time, {HOSTS} hosts each pulling the full appliance", f"{full_s:.2f} s")
        record("fleet", "registry bytes served: full copies / deltas", f"{served_full / max(served, 1):.0f}x")
        record("fleet", "fleet time: full copies / only what is lacking", f"**{full_s / delta_s:.1f}x** (goal ≥ 5x)")
        # All 20 hosts share this machine's 2 cores here, so the wall times above are bound by their local
        # work (writing and verifying the whole file), which real hosts do in parallel. The registry's
        # uplink is what a fleet shares: its transfer time at 1 Gbit/s, from the bytes it served.
        gbit = 125_000_000
        record("fleet", "registry uplink time at 1 Gbit/s: full copies", f"{served_full / gbit:.2f} s")
        record("fleet", "registry uplink time at 1 Gbit/s: only what is lacking", f"{served / gbit:.2f} s")
        record("fleet", "load average while measuring (other work on this machine)", f"{os.getloadavg()[0]:.1f}")
    finally:
        registry.stop()
        index.close()
