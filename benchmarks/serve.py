"""Section `serve` of `make bench`: chiron serve next to nginx serving the same files, on loopback.

50 concurrent clients (one `curl --parallel` process, so the client costs the same for every server)
download an appliance and a wheelhouse, and ask for an index page; each measurement is a fixed number
of requests and takes seconds. Four servers: chiron serve alone (sendfile through its zero-copy path),
chiron serve with zero-copy turned off (1 MiB reads), nginx serving the same files from disk, and
nginx in front of chiron serve with X-Accel-Redirect. Also the server's peak RSS as clients grow.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit"))

from sim import Sim  # noqa: E402

from chiron.service import tokens  # noqa: E402
from chiron.service.db import Database  # noqa: E402

from helpers import make_wheel  # noqa: E402

CHIRON = str(Path(sys.executable).parent / "chiron")
CLIENTS = 50
ROUNDS = 3
DOWNLOADS = 40
APPLIANCE_MIB = 64
WHEELS = 80
Record = Callable[[str, str, str], None]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"benchmark: {url} never became ready")


def _curl(urls: list[str], token: str | None, work: Path, clients: int = CLIENTS) -> tuple[float, list[float], int]:
    """Fetch every URL, ``clients`` at a time: (wall seconds, per-request seconds, bytes)."""
    cfg = work / "curl.cfg"
    lines = [f'header = "Authorization: Bearer {token}"'] if token else []
    for url in urls:
        lines += [f'url = "{url}"', 'output = "/dev/null"']
    cfg.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    proc = subprocess.run(
        [
            "curl",
            "-s",
            "-Z",
            "--parallel-max",
            str(clients),
            "--parallel-immediate",
            "-K",
            str(cfg),
            "-w",
            "%{time_total} %{size_download} %{http_code}\n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wall = time.perf_counter() - started
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    bad = [r for r in rows if r[2] not in ("200", "206")]
    if proc.returncode != 0 or bad or len(rows) != len(urls):
        raise SystemExit(f"benchmark: curl failed ({proc.returncode}, {len(bad)} bad answers): {proc.stderr[-300:]}")
    return wall, [float(r[0]) for r in rows], sum(int(r[1]) for r in rows)


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile, as most load tools report it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _nginx_conf(d: Path, static_port: int, accel_port: int, upstream: int) -> Path:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes {os.cpu_count() or 2};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  default_type application/octet-stream;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  upstream chiron {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{ listen 127.0.0.1:{static_port}; root {d}/static; }}
  server {{
    listen 127.0.0.1:{accel_port};
    location / {{ proxy_pass http://chiron; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /_chiron/appliances/ {{ internal; alias {d}/apps/; }}
    location /_chiron/files/ {{ internal; alias {d}/cache-accel/files/; }}
  }}
}}
""")
    return conf


def _site(d: Path) -> tuple[Path, list[Path], str]:
    """An appliance of WHEELS wheels and one APPLIANCE_MIB member, signed in memory; its root; a token."""
    wheels = [
        make_wheel(d / "wheels", f"pkg{i:02d}", "1.0", payload=b"#" + os.urandom(40_000).hex().encode())
        for i in range(WHEELS)
    ]
    members = {f"wheels/{w.name}": w.read_bytes() for w in wheels}
    members["files/blob"] = os.urandom(APPLIANCE_MIB << 20)
    sim = Sim()
    (d / "apps").mkdir()
    archive = sim.appliance(d / "apps" / "demo.pex", members)
    (d / "root.json").write_bytes(sim.root)
    t = tokens.new_token()
    Database(d / "serve.db").add_token(t.id, t.secret_sha256, "bench", ["read"], None)
    return archive, wheels, t.text


def bench_serve(work: Path, record: Record) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        record("serve", "skipped: nginx (the peer) is not installed", "apt-get install -y nginx")
        return
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    d = Path(tempfile.mkdtemp(prefix="serve-", dir=work))
    archive, wheels, token = _site(d)
    ports = {k: _port() for k in ("direct", "copy", "accel_app", "static", "accel")}
    base = [
        CHIRON,
        "serve",
        "--appliances",
        str(d / "apps"),
        "--root",
        str(d / "root.json"),
        "--db",
        str(d / "serve.db"),
    ]
    procs = {
        "direct": subprocess.Popen(
            [*base, "--port", str(ports["direct"]), "--access-log", os.devnull, "--cache-dir", str(d / "cache-direct")],
            stderr=subprocess.DEVNULL,
        ),
        "copy": subprocess.Popen(
            [*base, "--port", str(ports["copy"]), "--access-log", os.devnull, "--cache-dir", str(d / "cache-copy")],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "CHIRON_SERVE_ZEROCOPY": "0"},
        ),
        "accel_app": subprocess.Popen(
            [
                *base,
                "--port",
                str(ports["accel_app"]),
                "--access-log",
                os.devnull,
                "--x-accel-redirect",
                "/_chiron/",
                "--cache-dir",
                str(d / "cache-accel"),
            ],
            stderr=subprocess.DEVNULL,
        ),
    }
    conf = _nginx_conf(d, ports["static"], ports["accel"], ports["accel_app"])
    procs["nginx"] = subprocess.Popen([nginx, "-c", str(conf), "-p", str(d)], stderr=subprocess.DEVNULL)
    try:
        for name in ("direct", "copy", "accel_app"):
            _wait(f"http://127.0.0.1:{ports[name]}/readyz")
        _run(d, archive, wheels, token, ports, procs, record)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _static_copies(d: Path, archive: Path, wheels: list[Path], page: bytes) -> None:
    static = d / "static"
    (static / "wheels").mkdir(parents=True)
    shutil.copyfile(archive, static / "demo.pex")
    for w in wheels:
        shutil.copyfile(w, static / "wheels" / w.name)
    (static / "simple" / "pkg00").mkdir(parents=True)
    (static / "simple" / "pkg00" / "index.html").write_bytes(page)


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and their children's threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [pid, *(int(p) for p in out.split())]


def _measure(urls: list[str], token: str | None, d: Path, pids: list[int]) -> dict[str, float]:
    before = _cpu(pids)
    wall, times, got = _curl(urls, token, d)
    return {"wall": wall, "bytes": got, "n": len(urls), "cpu": _cpu(pids) - before, "times": times}  # type: ignore[dict-item]


def _run(
    d: Path, archive: Path, wheels: list[Path], token: str, ports: dict[str, int], procs: dict, record: Record
) -> None:  # type: ignore[type-arg]
    import hashlib
    import random

    shas = {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels}
    url = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    page = subprocess.run(
        ["curl", "-sf", "-H", f"Authorization: Bearer {token}", f"{url['direct']}/simple/pkg00/"],
        capture_output=True,
        check=True,
    ).stdout
    _static_copies(d, archive, wheels, page)
    _wait(f"{url['static']}/demo.pex")
    nginx = _children(procs["nginx"].pid)
    idle = _rss_kib(procs["direct"].pid, "VmRSS")
    _curl([url["direct"] + "/appliances/demo.pex"] * 20, token, d, clients=5)
    few = _rss_kib(procs["direct"].pid)
    targets = {
        "chiron serve (sendfile)": (
            url["direct"],
            "/appliances/demo.pex",
            "/files/{sha}/{name}",
            token,
            [procs["direct"].pid],
        ),
        "chiron serve (1 MiB reads)": (
            url["copy"],
            "/appliances/demo.pex",
            "/files/{sha}/{name}",
            token,
            [procs["copy"].pid],
        ),
        "nginx, static files": (url["static"], "/demo.pex", "/wheels/{name}", None, nginx),
        "nginx + chiron (X-Accel-Redirect)": (
            url["accel"],
            "/appliances/demo.pex",
            "/files/{sha}/{name}",
            token,
            [*nginx, procs["accel_app"].pid],
        ),
    }
    size = archive.stat().st_size
    samples: dict[str, dict[str, list[dict[str, float]]]] = {t: {"app": [], "wh": []} for t in targets}
    for _round in range(ROUNDS):  # interleaved, so a busy moment of the machine hits every server alike
        order = list(targets)
        random.shuffle(order)
        for label in order:
            root, app_path, wheel_path, tok, pids = targets[label]
            wheel_urls = [root + wheel_path.format(sha=shas[w.name], name=w.name) for w in wheels]
            samples[label]["app"].append(_measure([root + app_path] * DOWNLOADS, tok, d, pids))
            samples[label]["wh"].append(_measure(wheel_urls * 5, tok, d, pids))
    _report(samples, size, record)
    pages = {
        "chiron serve /simple/pkg00/": (url["direct"], "/simple/pkg00/", token),
        "nginx, the same page as a file": (url["static"], "/simple/pkg00/index.html", None),
    }
    for clients in (CLIENTS, 10, 1):
        for label, (root, path, tok) in pages.items():
            _curl([root + path] * 100, tok, d, clients=clients)
            wall, times, _ = _curl([root + path] * 1000, tok, d, clients=clients)
            record(
                "serve",
                f"index page x1000, {clients} client(s): {label}",
                f"p50 {_quantile(times, 0.5) * 1000:.1f} ms, p99 {_quantile(times, 0.99) * 1000:.1f} ms, "
                f"{1000 / wall:.0f} req/s",
            )
    many = _rss_kib(procs["direct"].pid)
    record(
        "serve",
        "chiron serve RSS: idle / peak, 5 clients / peak, 50 clients",
        f"{idle >> 10} MiB / {few >> 10} MiB / {many >> 10} MiB",
    )
    etag = subprocess.run(
        ["curl", "-sI", "-H", f"Authorization: Bearer {token}", f"{url['accel']}/appliances/demo.pex"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tag = next(
        (line.split(":", 1)[1].strip() for line in etag.splitlines() if line.lower().startswith("etag:")), "none"
    )
    record(
        "serve",
        "ETag through nginx X-Accel-Redirect",
        "sha256 (chiron's)" if len(tag) == 66 else f"nginx's own ({tag})",
    )


def _report(samples: dict[str, dict[str, list[dict[str, float]]]], size: int, record: Record) -> None:
    def rate(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] / r["wall"] for r in runs)

    def cpu_per(runs: list[dict[str, float]], per: str) -> float:
        return sum(r["cpu"] for r in runs) / sum(r[per] for r in runs)

    base = samples["nginx, static files"]
    for label, s in samples.items():
        times = [t for r in s["app"] for t in r["times"]]  # type: ignore[attr-defined]
        mbs = rate(s["app"], "bytes") / 1e6
        record(
            "serve",
            f"appliance {size >> 20} MiB x{DOWNLOADS}, {CLIENTS} clients: {label}",
            f"{mbs:.0f} MB/s ({mbs * 1e6 / rate(base['app'], 'bytes'):.2f}x nginx), p50 {_quantile(times, 0.5):.2f} s, "
            f"p99 {_quantile(times, 0.99):.2f} s; server CPU {cpu_per(s['app'], 'bytes') * 1e9:.2f} s/GB",
        )
    for label, s in samples.items():
        times = [t for r in s["wh"] for t in r["times"]]  # type: ignore[attr-defined]
        rps = rate(s["wh"], "n")
        record(
            "serve",
            f"wheelhouse {WHEELS} wheels x5, {CLIENTS} clients: {label}",
            f"{rps:.0f} req/s ({rps / rate(base['wh'], 'n'):.2f}x nginx), p50 {_quantile(times, 0.5) * 1000:.1f} ms, "
            f"p99 {_quantile(times, 0.99) * 1000:.1f} ms; server CPU {cpu_per(s['wh'], 'n') * 1e3:.2f} ms/request",
        )
