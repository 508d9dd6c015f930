"""Test helpers: tiny real wheels, a PEP 503 index on loopback, specs, and archive surgery."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import io
import json
import os
import subprocess
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiron.archive.layout import FOOTER, FOOTER_MAGIC
from chiron.archive.reader import read_layout
from chiron.core.text import canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    deps: tuple[str, ...] = (),
    tag: str = "py3-none-any",
    license: str = "MIT",
    payload: bytes = b"",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a minimal, valid wheel (pure Python unless ``tag`` says otherwise)."""
    dist = name.replace("-", "_")
    fname = f"{dist}-{version}-{tag}.whl"
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n".encode() + payload,
        f"{dist}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: {license}\n"
            + "".join(f"Requires-Dist: {d}\n" for d in deps)
        ).encode(),
        **{f"{dist}/{name}": text.encode() for name, text in (extra_files or {}).items()},
        f"{dist}-{version}.dist-info/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: chiron-tests\nRoot-Is-Purelib: {'true' if tag.endswith('any') else 'false'}\n"
            + "".join(f"Tag: {t}\n" for t in _expand(tag))
        ).encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}-{version}.dist-info/RECORD,,")
    files[f"{dist}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / fname
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            z.writestr(info, data)
    return out


def _wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return z.read(name)


def _expand(tag: str) -> list[str]:
    py, abi, plat = tag.split("-")
    return [f"{p}-{a}-{pl}" for p in py.split(".") for a in abi.split(".") for pl in plat.split(".")]


_BACKEND = """
import os

NAME, VERSION = {name!r}, {version!r}
DIST = NAME.replace("-", "_")


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = os.path.join(metadata_directory, f"{{DIST}}-{{VERSION}}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n")
    return os.path.basename(info)
"""


def make_sdist(directory: Path, name: str, version: str) -> Path:
    """A real sdist with an in-tree PEP 517 backend, so pip can read its metadata with no index."""
    import tarfile

    dist = name.replace("-", "_")
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{dist}-{version}.tar.gz"
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": _BACKEND.format(name=name, version=version),
    }
    with tarfile.open(out, "w:gz") as t:
        for fname, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{dist}-{version}/{fname}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out


class LocalIndex:
    """A PEP 503 simple index over a directory of files, on 127.0.0.1, counting what it serves."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: Counter[str] = Counter()
        self.override: dict[str, bytes] = {}
        self.yanked: set[str] = set()  # filenames served with data-yanked (PEP 592)
        self.slow: dict[str, float] = {}  # filename -> seconds to sleep per 64 KiB sent
        self.sent: Counter[str] = Counter()  # bytes sent so far of each slow file
        self.ranges: list[tuple[str, int]] | None = None  # a list: serve HTTP Range requests, recorded here
        self._hashes: dict[tuple[str, int, int], tuple[str, str]] = {}
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                index.requests[self.path] += 1
                body, ctype = index._serve(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                name = self.path.removeprefix("/files/")
                wanted = self.headers.get("Range", "")
                if index.ranges is not None and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = int(wanted[6:-1])
                    index.ranges.append((name, start))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    body = body[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                delay = index.slow.get(name)
                if delay is None:
                    self.wfile.write(body)
                    return
                for i in range(0, len(body), 1 << 16):
                    self.wfile.write(body[i : i + (1 << 16)])
                    self.wfile.flush()
                    index.sent[name] += min(1 << 16, len(body) - i)
                    time.sleep(delay)

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops concurrent connects (a 1 s SYN retry each)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def file_requests(self) -> int:
        """Artifact downloads (PEP 658 metadata files are index metadata, not artifacts)."""
        return sum(n for p, n in self.requests.items() if p.startswith("/files/") and not p.endswith(".metadata"))

    def _projects(self) -> dict[str, list[Path]]:
        from packaging.utils import canonicalize_name

        out: dict[str, list[Path]] = {}
        for f in sorted(self.directory.iterdir()):
            if f.suffix == ".whl" or f.name.endswith(".tar.gz"):
                stem = f.name[: -len(".tar.gz")] if f.name.endswith(".tar.gz") else f.name
                project = canonicalize_name(stem.split("-")[0])
                out.setdefault(project, []).append(f)
        return out

    def _serve(self, path: str) -> tuple[bytes | None, str]:
        if path.startswith("/files/") and path.endswith(".whl.metadata"):
            wheel = self.directory / path.removeprefix("/files/").removesuffix(".metadata")
            return (_wheel_metadata(wheel) if wheel.is_file() else None), "text/plain"
        if path.startswith("/files/"):
            name = path.removeprefix("/files/")
            if name in self.override:
                return self.override[name], "application/octet-stream"
            f = self.directory / name
            return (f.read_bytes() if f.is_file() else None), "application/octet-stream"
        projects = self._projects()
        if path.rstrip("/") == "/simple":
            links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in projects)
            return f"<html><body>{links}</body></html>".encode(), "text/html"
        project = path.removeprefix("/simple/").strip("/")
        if project not in projects:
            return None, ""
        links = "".join(
            f'<a href="/files/{f.name}#sha256={self._digests(f)[0]}"{self._attrs(f)}>{f.name}</a>\n'
            for f in projects[project]
        )
        return f"<html><body>{links}</body></html>".encode(), "text/html"

    def _digests(self, f: Path) -> tuple[str, str]:
        """sha256 of a file and of its wheel METADATA, computed once per file version (a real index
        serves static pages; hashing on every request would make the index the bottleneck)."""
        st = f.stat()
        key = (f.name, st.st_mtime_ns, st.st_size)
        if key not in self._hashes:
            meta = hashlib.sha256(_wheel_metadata(f)).hexdigest() if f.suffix == ".whl" else ""
            self._hashes[key] = (hashlib.sha256(f.read_bytes()).hexdigest(), meta)
        return self._hashes[key]

    def _attrs(self, f: Path) -> str:
        """PEP 658 metadata (as PyPI serves it, so resolving downloads no wheel) and PEP 592 yanking."""
        out = ""
        if f.suffix == ".whl":
            out += f' data-core-metadata="sha256={self._digests(f)[1]}"'
        if f.name in self.yanked:
            out += ' data-yanked="withdrawn by the tests"'
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SPEC_TEMPLATE = """
[appliance]
name = "{name}"
version = "{version}"

[python]
requirements = {requirements}
index_url = "{index_url}"
{extra_python}

{environments}

[trust]
root = "{keys}/1.root.json"

[trust.roles.targets]
keys = ["file2:{keys}/targets.pem"]
expires = "{targets_expires}"

[trust.roles.snapshot]
keys = ["file2:{keys}/snapshot.pem"]
expires = "7d"

[trust.roles.timestamp]
keys = ["file2:{keys}/timestamp.pem"]
expires = "{timestamp_expires}"

{extra}
"""

ENV_311 = """
[[environments]]
name = "cp311"
python_version = "3.11"
platforms = ["manylinux_2_17_x86_64"]
"""

ENV_312 = """
[[environments]]
name = "cp312"
python_version = "3.12"
platforms = ["manylinux_2_17_x86_64"]
"""


def write_spec(
    directory: Path,
    *,
    keys: Path,
    index_url: str,
    requirements: list[str],
    name: str = "demo",
    version: str = "1.0.0",
    environments: str = ENV_311,
    extra_python: str = "",
    extra: str = "",
    targets_expires: str = "30d",
    timestamp_expires: str = "1d",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / "appliance.toml"
    spec.write_text(
        SPEC_TEMPLATE.format(
            name=name,
            version=version,
            requirements=json.dumps(requirements),
            index_url=index_url,
            extra_python=extra_python,
            environments=environments,
            keys=keys,
            extra=extra,
            targets_expires=targets_expires,
            timestamp_expires=timestamp_expires,
        )
    )
    return spec


def rewrite_archive(
    src: Path,
    dest: Path,
    *,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
    remove: tuple[str, ...] = (),
    index_hook: Callable[[dict], None] | None = None,
    gap_after: str | None = None,
    tool_zip: bytes | None = None,
) -> Path:
    """Rebuild an archive the way an attacker who knows the format would: consistent index/footer."""
    layout = read_layout(src)
    replace, add = replace or {}, add or {}
    data = src.read_bytes()
    members: list[tuple[str, bytes]] = []
    for m in layout.members:
        if m.name in remove:
            continue
        members.append((m.name, replace.get(m.name, data[m.offset : m.offset + m.length])))
    members += list(add.items())
    out = bytearray(layout.shebang)
    entries = []
    for name, body in members:
        entries.append({"name": name, "offset": len(out), "length": len(body)})
        out += body
        if name == gap_after:
            out += b"\0" * 16
    index = dict(layout.index, members=entries)
    if index_hook:
        index_hook(index)
    raw = canonical_json(index)
    index_offset = len(out)
    out += raw
    zip_offset = len(out) + FOOTER.size
    out += FOOTER.pack(FOOTER_MAGIC, index_offset, len(raw), zip_offset, hashlib.sha256(raw).digest())
    out += data[layout.zip_offset :] if tool_zip is None else tool_zip
    dest.write_bytes(bytes(out))
    os.chmod(dest, 0o755)
    return dest


def assert_cli_verify_fails(bad: Path, good: Path, keys: Path, capsys: Any, expect: str) -> None:
    """``chiron verify`` of a tampered copy exits 1 and names the problem, without a traceback."""
    import pytest

    from chiron.cli import main

    assert bad.read_bytes() != good.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(bad), "--root", str(keys / "1.root.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 1, err
    assert "verification FAILED" in err and expect in err, err
    assert "Traceback" not in err


def ssh_verify(archive: Path, sig: Path, allowed: Path) -> subprocess.CompletedProcess[str]:
    """``ssh-keygen -Y verify`` of the detached signature (the operator's check before running a file)."""
    with archive.open("rb") as f:
        return subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(allowed),
                "-I",
                "chiron",
                "-n",
                "chiron-appliance",
                "-s",
                str(sig),
            ],
            stdin=f,
            capture_output=True,
            text=True,
            timeout=120,
        )


def files_spec(directory: Path, *, keys: Path, index_url: str, text: str) -> Path:
    """A one-wheel CPython 3.11 spec that packs ``notes.txt`` (holding ``text``) as docs/notes.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text(text)
    return write_spec(
        directory,
        keys=keys,
        index_url=index_url,
        requirements=["beta==1.0"],
        environments=ENV_311,
        extra='[[files]]\nsrc = "notes.txt"\ndest = "docs/notes.txt"\n',
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRegistry:
    """Debian's docker-registry (distribution 2.8) on a free loopback port, storing under ``root``.

    With ``htpasswd`` every request needs basic auth by a user of that file; with ``tls`` (certificate
    and key files) it speaks only HTTPS. Its access log (stderr) records every request, so a test can
    count the blobs a client fetched.
    """

    def __init__(self, root: Path, htpasswd: Path | None = None, tls: tuple[Path, Path] | None = None) -> None:
        import shutil
        import socket

        if shutil.which("docker-registry") is None:
            raise RuntimeError("NO docker-registry: .ci/run installs the docker-registry package")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._tls = tls is not None
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        auth = f"auth:\n  htpasswd:\n    realm: chiron-test\n    path: {htpasswd}\n" if htpasswd else ""
        tls_cfg = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
        config = root / "config.yml"
        config.write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{self.port}\n{tls_cfg}{auth}"
        )
        self.log = root / "access.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

    def settle(self) -> None:
        """Wait until the access log holds every request answered so far: the registry logs a request
        after its response is sent, so a client can be done before the line is written. A marker
        request made now is logged after those (bounded wait)."""
        import urllib.error
        import urllib.request

        self._marks = getattr(self, "_marks", 0) + 1
        marker = f"/v2/settle-{self._marks}/tags/list"
        scheme = "https" if self._tls else "http"
        with contextlib.suppress(urllib.error.URLError, OSError):
            ctx = __import__("ssl")._create_unverified_context() if self._tls else None
            urllib.request.urlopen(f"{scheme}://{self.address}{marker}", timeout=5, context=ctx)
        for _ in range(100):
            if marker in self.log.read_text(errors="replace"):
                return
            time.sleep(0.05)

    def requests(self, method: str = "GET", kind: str = "blobs") -> list[tuple[str, int, int]]:
        """(path, status, bytes) of each ``method`` request on ``/v2/.../{kind}/...`` in the access log."""
        import re

        self.settle()

        pattern = re.compile(rf'"{method} (/v2/\S+/{kind}/\S+) HTTP/[0-9.]+" ([0-9]+) ([0-9]+|-)')
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = pattern.search(line)
            if m:
                out.append((m[1], int(m[2]), int(m[3]) if m[3] != "-" else 0))
        return out

    def blob_file(self, digest: str) -> Path:
        """Where the registry stores a blob's bytes (to damage it on purpose)."""
        hexdigest = digest.partition(":")[2]
        return (
            self.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log.close()


def make_tls(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host`` signed by it: (ca.pem, server.pem, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chiron test CA")])
    ca = cert("chiron test CA", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = cert(host, key, ca.subject, ca_key, False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


# ---------------------------------------------------------------- chiron serve on loopback (test_serve, the browser tests)


def make_tokens(db: Path) -> dict[str, str]:
    """Tokens of each scope, and one a host uses (read and report)."""
    from chiron.service import tokens
    from chiron.service.db import Database

    database = Database(db)
    out = {}
    for name, scopes in (
        ("read", ["read"]),
        ("report", ["report"]),
        ("admin", ["admin"]),
        ("host", ["read", "report"]),
    ):
        t = tokens.new_token()
        database.add_token(t.id, t.secret_sha256, name, scopes, None)
        out[name] = t.text
    return out


def signed_receipt(key: Ed25519PrivateKey, host: str, seq: int, targets: int = 5, **over: Any) -> dict[str, Any]:
    """A chiron.receipt/1 document as a host makes it, signed by ``key`` (made by hand: no installed host
    needed): demo 1.0.0 installed at metadata version ``targets``, its last install ok. ``over`` replaces
    whole fields before the signature is made (a field keeps its place in the document)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from chiron.engines import receipts

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body: dict[str, Any] = {
        "schema": "chiron.receipt/1",
        "host": host,
        "key": receipts.key_text(raw),
        "key_sha256": receipts.fingerprint(raw),
        "seq": seq,
        "time": "2026-01-02T03:04:05Z",
        "prefix": "/opt/chiron",
        "appliance": {
            "name": "demo",
            "version": "1.0.0",
            "release": f"demo-1.0.0-{targets}",
            "environment": "cp311",
            "installed": "2026-01-02T03:00:00Z",
        },
        "previous": None,
        "metadata_versions": {"root": 1, "timestamp": targets, "snapshot": targets, "targets": targets},
        "last_operation": {"time": "2026-01-02T03:00:00Z", "op": "install", "result": "ok"},
        "pending_transaction": False,
        "audit_head": {"seq": 1, "sha256": "0" * 64},
        "warnings": [],
        "chiron_version": "0.1.0",
        **over,
    }
    body["signature"] = receipts.sign(body, key)
    return body


class Running:
    """A service in this process (uvicorn in a thread), with a tiny HTTP client for the tests."""

    def __init__(self, settings: Any, *, certfile: Path | None = None, keyfile: Path | None = None) -> None:
        import uvicorn

        from chiron.service.server import Listen, config

        self.settings = settings
        self.port = free_port()
        self.scheme = "https" if certfile else "http"
        listen = Listen(port=self.port, certfile=certfile, keyfile=keyfile, shutdown_timeout=5)
        self.server = uvicorn.Server(config(settings, listen))  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the service did not start"
        if self.scheme == "http":
            wait_ready(self.url)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def call(
    url: str, method: str, path: str, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def get_json(url: str, path: str, token: str | None, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    status, _h, raw = call(url, method, path, token, body)
    return status, json.loads(raw) if raw else None


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if call(url, "GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")
