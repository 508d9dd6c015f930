"""chiron serve's pure parts and its HTTP behaviour in-process (FastAPI's TestClient over an appliance
the simulator signs in milliseconds): ranges, tokens, problems, negotiation, receipts, the fleet, auth,
body limits, change detection, and the committed OpenAPI schema."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sim import Sim

from chiron.engines import receipts
from chiron.engines.fleet import Newest, fleet_view
from chiron.errors import EnvironmentProblem, HostStateError, Refused, UsageError, VerificationError
from chiron.service import problems, simple, tokens
from chiron.service.app import create_app
from chiron.service.db import Database
from chiron.service.ranges import ByteRange, Unsatisfiable, if_range_holds, none_match, parse_range
from chiron.service.settings import Settings

from helpers import make_wheel, signed_receipt

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- ranges and conditions


@pytest.mark.parametrize(
    ("header", "size", "expect"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, ByteRange(0, 4)),
        ("bytes=5-", 10, ByteRange(5, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes=8-100", 10, ByteRange(8, 9)),
        ("bytes=0-1,4-5", 10, None),  # several ranges: the whole file (allowed by RFC 9110)
        ("items=0-1", 10, None),
        ("bytes=5-2", 10, None),  # invalid: ignored
        ("bytes=x-", 10, None),
    ],
)
def test_range_parsing(header: str | None, size: int, expect: ByteRange | None) -> None:
    assert parse_range(header, size) == expect


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_conditions() -> None:
    tag = '"' + "a" * 64 + '"'
    assert if_range_holds(None, tag) and if_range_holds(tag, tag)
    assert not if_range_holds('"other"', tag) and not if_range_holds("Wed, 21 Oct 2015 07:28:00 GMT", tag)
    assert none_match(tag, tag) and none_match(f'"x", W/{tag}', tag) and none_match("*", tag)
    assert not none_match(None, tag) and not none_match('"x"', tag)


# ---------------------------------------------------------------- tokens, problems, negotiation


def test_tokens_are_random_hashed_and_checked_in_constant_time() -> None:
    a, b = tokens.new_token(), tokens.new_token()
    assert a.text != b.text and a.id != b.id
    token_id, secret = tokens.split(a.text) or ("", "")
    assert token_id == a.id and a.secret_sha256 not in a.text and secret not in a.secret_sha256
    assert tokens.matches(secret, a.secret_sha256) and not tokens.matches(secret, b.secret_sha256)
    assert tokens.split("chiron_nothex_x") is None and tokens.split(a.text + "x") is None
    assert (
        tokens.allows({"admin"}, "report") and tokens.allows({"read"}, "read") and not tokens.allows({"read"}, "report")
    )
    assert tokens.check_scopes(["admin", "read"]) == ["read", "admin"]
    with pytest.raises(ValueError, match="unknown scope write"):
        tokens.check_scopes(["write"])


def test_problem_types_are_stable_and_documented() -> None:
    doc = problems.document("replayed-receipt", "receipt 3 from h1", "/v1/receipts", host="h1")
    assert doc == {
        "type": "https://chiron.invalid/problems/replayed-receipt",
        "title": problems.TYPES["replayed-receipt"][1],
        "status": 409,
        "detail": "receipt 3 from h1",
        "instance": "/v1/receipts",
        "host": "h1",
    }
    serve_md = (REPO / "docs" / "serve.md").read_text()
    for slug, (status, _title) in problems.TYPES.items():
        assert f"| `{slug}` | {status} |" in serve_md, f"docs/serve.md does not list the problem type {slug}"
    with pytest.raises(ValueError):
        problems.ProblemError("no-such-type", "x")


@pytest.mark.parametrize(
    ("accept", "fmt", "expect"),
    [
        (None, None, "html"),
        ("*/*", None, "html"),
        ("application/vnd.pypi.simple.v1+json", None, "json"),
        (
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01",
            None,
            "json",
        ),
        ("text/html;q=0.5, application/vnd.pypi.simple.v1+json;q=0.1", None, "html"),
        ("application/vnd.pypi.simple.latest+html", None, "html-v1"),
        ("application/json", None, None),
        ("application/vnd.pypi.simple.v1+json;q=0", None, None),
        ("text/html", "application/vnd.pypi.simple.v1+json", "json"),
    ],
)
def test_content_negotiation(accept: str | None, fmt: str | None, expect: str | None) -> None:
    assert simple.negotiate(accept, fmt) == expect


# ---------------------------------------------------------------- receipts and the fleet


def _key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_receipt_signatures() -> None:
    key = _key()
    doc = signed_receipt(key, "web-01", 1)
    assert receipts.check_receipt(json.loads(json.dumps(doc))) == doc
    tampered = {**doc, "prefix": "/elsewhere"}
    with pytest.raises(VerificationError, match="signature does not match"):
        receipts.check_receipt(tampered)
    other = _key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(VerificationError, match="key_sha256 is not the sha256"):
        receipts.check_receipt({**doc, "key": receipts.key_text(other)})
    with pytest.raises(VerificationError, match="unknown"):
        receipts.check_receipt({**doc, "extra": 1})
    with pytest.raises(VerificationError, match="seq"):
        receipts.check_receipt({**doc, "seq": True})


def test_host_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert receipts.load_identity(state) is None
    first = receipts.ensure_identity(state, "web-01")
    assert (state / "identity" / "host-key.pem").stat().st_mode & 0o777 == 0o600
    assert receipts.ensure_identity(state) == first == receipts.load_identity(state)
    # Until a receipt is numbered, a name given later wins (install names it after the hostname).
    renamed = receipts.ensure_identity(state, "web-02")
    assert (renamed.host, renamed.public) == ("web-02", first.public) and receipts.load_identity(state) == renamed
    (state / "identity" / "seq.json").write_text('{"seq": 1}')
    with pytest.raises(UsageError, match="already 'web-02'"):
        receipts.ensure_identity(state, "web-03")
    with pytest.raises(UsageError, match="host id"):
        receipts.ensure_identity(tmp_path / "other", "bad/name")
    info = json.loads((state / "identity" / "host.json").read_text())
    info["key"] = receipts.key_text(b"\0" * 32)
    (state / "identity" / "host.json").write_text(json.dumps(info))
    with pytest.raises(HostStateError, match="names another key"):
        receipts.load_identity(state)


def test_fleet_view_orders_and_counts() -> None:
    now = datetime(2026, 1, 3, tzinfo=UTC)
    key = _key()
    hosts = [
        {
            "host": "a",
            "state": "approved",
            "last_seen": "2026-01-02T23:00:00Z",
            "receipt": signed_receipt(key, "a", 1, 5),
        },
        {
            "host": "b",
            "state": "approved",
            "last_seen": "2025-12-01T00:00:00Z",
            "receipt": signed_receipt(key, "b", 1, 4),
        },
        {
            "host": "c",
            "state": "approved",
            "last_seen": "2026-01-02T23:00:00Z",
            "receipt": signed_receipt(key, "c", 1, 5, last_operation={"op": "upgrade", "result": "failed"}),
        },
        {"host": "d", "state": "pending", "last_seen": None, "receipt": None},
    ]
    view = fleet_view(hosts, {"demo": Newest("demo", "1.1.0", 5)}, now=now, silent_after=timedelta(days=1))
    assert [h["host"] for h in view["hosts"]] == ["c", "b", "a", "d"]
    assert view["summary"] == {
        "hosts": 4,
        "approved": 3,
        "pending": 1,
        "revoked": 0,
        "current": 2,
        "behind": 1,
        "failed": 1,
        "silent": 1,
    }
    b = view["hosts"][1]
    assert b["behind"] is True and b["silent"] is True and b["newest"] == {"version": "1.1.0", "metadata_version": 5}


# ---------------------------------------------------------------- the service in-process


@pytest.fixture()
def served(tmp_path: Path) -> Any:
    """A service over one simulated appliance with two wheels, and tokens of each scope."""
    sim = Sim()
    wheels = tmp_path / "wheels"
    a = make_wheel(wheels, "alpha", "1.0", deps=("beta>=1",))
    b = make_wheel(wheels, "beta", "1.0")
    (tmp_path / "apps").mkdir()
    archive = sim.appliance(tmp_path / "apps" / "demo.pex", {f"wheels/{w.name}": w.read_bytes() for w in (a, b)})
    (tmp_path / "root.json").write_bytes(sim.root)
    db = Database(tmp_path / "serve.db")
    made = {}
    for scopes in (["read"], ["report"], ["admin"]):
        t = tokens.new_token()
        db.add_token(t.id, t.secret_sha256, "-".join(scopes), scopes, None)
        made["+".join(scopes)] = t.text
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        appliances=tmp_path / "apps",
        root_file=tmp_path / "root.json",
        json_log=False,
        rescan_every=0.2,
        max_body=4096,
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.tokens = made  # type: ignore[attr-defined]
        client.archive = archive  # type: ignore[attr-defined]
        client.wheels = {w.name: w for w in (a, b)}  # type: ignore[attr-defined]
        client.db_path = tmp_path / "serve.db"  # type: ignore[attr-defined]
        yield client


def _auth(client: Any, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.tokens[scope]}"}


def _basic(token: str, user: str = "__token__") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def test_scopes_and_credentials(served: Any) -> None:
    missing = served.get("/simple/")
    assert missing.status_code == 401 and "Basic" in missing.headers["www-authenticate"]
    assert missing.headers["content-type"] == problems.MEDIA_TYPE
    assert missing.json()["type"].endswith("/unauthorized")
    assert (
        served.get("/simple/", headers={"Authorization": "Bearer chiron_000000000000_" + "A" * 43}).status_code == 401
    )
    assert served.get("/simple/", headers=_basic(served.tokens["read"])).status_code == 200
    assert served.get("/simple/", headers=_basic(served.tokens["read"], "alice")).status_code == 401
    assert served.get("/simple/", headers=_auth(served, "admin")).status_code == 200  # admin includes read
    refused = served.get("/simple/", headers=_auth(served, "report"))
    assert refused.status_code == 403 and refused.json()["type"].endswith("/forbidden")
    assert served.get("/v1/hosts", headers=_auth(served, "read")).status_code == 403
    assert served.get("/v1/hosts", headers=_auth(served, "admin")).status_code == 200
    assert served.get("/metrics").status_code == 401
    assert "chiron_http_requests_total" in served.get("/metrics", headers=_auth(served, "read")).text


def test_index_pages_and_files(served: Any) -> None:
    h = _auth(served, "read")
    page = served.get("/simple/alpha/", headers={**h, "Accept": simple.JSON_V1})
    assert page.status_code == 200 and page.headers["content-type"] == simple.JSON_V1
    (f,) = page.json()["files"]
    wheel = served.wheels["alpha-1.0-py3-none-any.whl"]
    assert f["url"].startswith("../../files/") and f["core-metadata"] and f["yanked"] is False
    url = "/" + f["url"].removeprefix("../../")
    body = served.get(url, headers=h)
    assert body.content == wheel.read_bytes() and body.headers["etag"] == f'"{f["hashes"]["sha256"]}"'
    meta = served.get(url + ".metadata", headers=h)
    assert b"Requires-Dist: beta>=1" in meta.content
    part = served.get(url, headers={**h, "Range": "bytes=10-19", "If-Range": body.headers["etag"]})
    assert part.status_code == 206 and part.content == wheel.read_bytes()[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{wheel.stat().st_size}"
    stale = served.get(url, headers={**h, "Range": "bytes=10-19", "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == wheel.read_bytes()
    assert served.get(url, headers={**h, "Range": "bytes=99999-"}).status_code == 416
    assert served.get(url, headers={**h, "If-None-Match": body.headers["etag"]}).status_code == 304
    assert served.get("/simple/Alpha/", headers=h, follow_redirects=False).status_code == 301
    assert served.get("/simple/alpha/", headers={**h, "Accept": "application/xml"}).status_code == 406
    assert served.get("/files/" + "0" * 64 + "/alpha-1.0-py3-none-any.whl", headers=h).status_code == 404
    yank = served.post("/v1/yanks", headers=_auth(served, "admin"), json={"filename": wheel.name, "reason": "broken"})
    assert yank.status_code == 200
    assert (
        served.get("/simple/alpha/", headers={**h, "Accept": simple.JSON_V1}).json()["files"][0]["yanked"] == "broken"
    )


def test_appliance_downloads(served: Any) -> None:
    h = _auth(served, "read")
    listing = served.get("/v1/appliances", headers=h).json()
    (info,) = listing["appliances"]
    assert info["latest"] and info["wheels"] == 2 and listing["failed"] == []
    latest = served.get("/appliances/latest", headers=h, follow_redirects=False)
    assert latest.status_code == 307 and latest.headers["location"] == info["file"]
    whole = served.get("/appliances/" + info["file"], headers=h)
    assert whole.content == served.archive.read_bytes() and whole.headers["etag"] == f'"{info["sha256"]}"'
    head = served.head("/appliances/" + info["file"], headers=h)
    assert head.status_code == 200 and head.headers["content-length"] == str(info["size"]) and not head.content


def test_bodies_are_limited_and_validated_before_anything_is_written(served: Any) -> None:
    admin = _auth(served, "admin")
    before = _dump(served.db_path)
    too_big = served.post("/v1/receipts", headers={**admin, "Content-Type": "application/json"}, content=b"{" * 5000)
    assert too_big.status_code == 413 and too_big.json()["type"].endswith("/body-too-large")
    bad_json = served.post("/v1/receipts", headers={**admin, "Content-Type": "application/json"}, content=b"{nope")
    assert bad_json.status_code == 400 and bad_json.json()["type"].endswith("/malformed-body")
    wrong = served.post("/v1/receipts", headers=admin, json={"schema": "chiron.receipt/1", "host": "x"})
    assert wrong.status_code == 422 and wrong.json()["errors"]
    text = served.post("/v1/receipts", headers={**admin, "Content-Type": "text/plain"}, content=b"{}")
    assert text.status_code == 415
    assert _dump(served.db_path) == before


def test_receipts_enrolment_approval_replay(served: Any) -> None:
    key, report, admin = _key(), _auth(served, "report"), _auth(served, "admin")
    first = signed_receipt(key, "web-01", 1)
    before = _dump(served.db_path)
    unknown = served.post("/v1/receipts", headers=report, json=first)
    assert unknown.status_code == 403 and unknown.json()["type"].endswith("/unknown-host")
    assert _dump(served.db_path) == before
    assert served.post("/v1/enrolments", headers=report, json=first).json()["state"] == "pending"
    assert served.post("/v1/receipts", headers=report, json=first).json()["type"].endswith("/host-not-approved")
    assert served.post("/v1/hosts/web-01/approve", headers=admin, json={}).status_code == 200
    ok = served.post("/v1/receipts", headers=report, json=first)
    assert ok.status_code == 201 and ok.json()["seq"] == 1
    before = _dump(served.db_path)
    replay = served.post("/v1/receipts", headers=report, json=first)
    assert replay.status_code == 409 and replay.json()["type"].endswith("/replayed-receipt")
    forged = {**signed_receipt(key, "web-01", 2), "prefix": "/tampered"}
    assert served.post("/v1/receipts", headers=report, json=forged).json()["type"].endswith("/bad-signature")
    impostor = signed_receipt(_key(), "web-01", 3)
    assert served.post("/v1/receipts", headers=report, json=impostor).json()["type"].endswith("/unknown-host-key")
    assert _dump(served.db_path) == before
    fleet = served.get("/v1/hosts", headers=admin).json()
    assert fleet["summary"]["approved"] == 1 and fleet["hosts"][0]["appliance"]["name"] == "demo"


def test_a_changed_appliance_is_refused_then_dropped(served: Any) -> None:
    h = _auth(served, "read")
    f = served.get("/simple/beta/", headers={**h, "Accept": simple.JSON_V1}).json()["files"][0]
    url = "/" + f["url"].removeprefix("../../")
    assert served.get(url, headers=h).status_code == 200
    data = bytearray(served.archive.read_bytes())
    at = data.find(served.wheels["beta-1.0-py3-none-any.whl"].read_bytes()[:64]) + 40
    with served.archive.open("r+b") as out:  # in place: same inode, new ctime
        out.seek(at)
        out.write(bytes([data[at] ^ 0xFF]))
    refused = served.get(url, headers=h)
    assert refused.status_code == 503 and refused.json()["type"].endswith("/appliance-changed")
    # A reader is told which file and what happened, never where it lies on the server.
    detail = refused.json()["detail"]
    assert served.archive.name in detail and str(served.archive.parent) not in detail
    deadline = time.monotonic() + 10
    while not served.get("/v1/appliances", headers=h).json()["failed"] and time.monotonic() < deadline:
        time.sleep(0.05)
    listing = served.get("/v1/appliances", headers=h).json()
    assert listing["appliances"] == [] and listing["failed"] == [
        {
            "path": served.archive.name,
            "problem": f"{served.archive.name}: did not verify; it is not served (an admin sees why)",
        }
    ]
    admin = served.get("/v1/appliances", headers=_auth(served, "admin")).json()  # an admin sees why, and where
    assert (
        admin["failed"][0]["path"] == str(served.archive) and "sha256 does not match" in admin["failed"][0]["problem"]
    )
    assert served.get(url, headers=h).status_code == 404
    ready = served.get("/readyz").json()  # open to anyone: the file's name, not the server's paths
    assert ready["failed"] == 1 and served.archive.name in ready["detail"][0]
    assert str(served.archive.parent) not in json.dumps(ready)


def test_a_source_directory_gone_for_a_moment_is_logged_and_watched_again(
    served: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The appliances directory renamed away and back: /readyz says not ready without the server's
    paths, the log says why, and the watcher goes on (it used to die on the OSError)."""
    apps = served.archive.parent
    apps.rename(tmp_path / "away")
    deadline = time.monotonic() + 10
    while served.get("/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    ready = served.get("/readyz")
    assert ready.status_code == 503 and str(tmp_path) not in ready.text
    (tmp_path / "away").rename(apps)
    deadline = time.monotonic() + 10
    while served.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.get("/readyz").status_code == 200
    assert "scanning the sources" in capfd.readouterr().err


def test_the_servers_own_trouble_is_logged_not_told(capsys: pytest.CaptureFixture[str]) -> None:
    """A database that cannot be opened, a full disk: the caller learns that it failed; the path and
    the error go to the service log."""
    problem = problems.from_chiron_error(EnvironmentProblem("--db /srv/x/serve.db: database is locked"))
    assert problem.status == 503 and "/srv/x" not in problem.detail and "log" in problem.detail
    assert "/srv/x/serve.db: database is locked" in capsys.readouterr().err
    refused = problems.from_chiron_error(Refused("receipt 7 of web-01 was already imported"))
    assert refused.status == 409 and refused.detail == "receipt 7 of web-01 was already imported"


def test_openapi_schema_is_committed() -> None:
    from chiron.service.openapi import schema_text

    committed = REPO / "docs" / "openapi.json"
    assert committed.read_text() == schema_text(), (
        "docs/openapi.json is stale: regenerate it with 'chiron serve openapi -o docs/openapi.json'"
    )


# ---------------------------------------------------------------- client side and the delta cache


def test_url_credentials_become_a_header_and_etags_name_a_sha256() -> None:
    from chiron.engines.download import strong_sha256
    from chiron.sources.http import with_url_credentials

    url, client = with_url_credentials("https://__token__:abc%2Fd@host:8443/simple/?x=1", None)
    assert url == "https://host:8443/simple/?x=1" and client.token == "abc/d"
    assert client.headers()["Authorization"] == "Bearer abc/d"
    with pytest.raises(UsageError, match="__token__"):
        with_url_credentials("https://alice:pw@host/", None)
    assert strong_sha256('"' + "a" * 64 + '"') == "a" * 64
    assert strong_sha256('W/"' + "a" * 64 + '"') == "" and strong_sha256('"6b0dd2ad-46341de"') == ""


def test_deltas_are_built_once_per_inventory_and_evicted(tmp_path: Path) -> None:
    from chiron.archive import delta
    from chiron.core.fs import sha256_file
    from chiron.engines.deltacache import DeltaCache, delta_key

    sim = Sim()
    old = sim.appliance(tmp_path / "old.pex", {"files/a": b"a" * 1000, "files/b": b"b" * 1000})
    new = sim.appliance(tmp_path / "new.pex", {"files/a": b"a" * 1000, "files/b": b"c" * 1000})
    inventory = {
        "schema": "chiron.inventory/1",
        "name": "demo",
        "releases": [],
        "content": sorted(delta.base_content(old)),
    }
    cache = DeltaCache(tmp_path / "deltas", max_files=1)
    made = cache.get(inventory, new, sha256_file(new))
    assert not made.hit and made.key == delta_key(inventory["content"], sha256_file(new))
    assert made.sha256 == sha256_file(made.path) and made.carried < made.full_size == new.stat().st_size
    again = cache.get({**inventory, "content": list(reversed(inventory["content"]))}, new, sha256_file(new))
    assert again.hit and again.path == made.path  # the same pieces in another order: the same delta
    delta.apply(made.path, [old], tmp_path / "rebuilt.pex")
    assert (tmp_path / "rebuilt.pex").read_bytes() == new.read_bytes()
    with pytest.raises(VerificationError, match="changed while a delta was made"):
        cache.get({**inventory, "content": []}, new, "0" * 64)
    other = cache.get({**inventory, "content": []}, new, sha256_file(new))
    assert not other.hit and cache.find(made.key) is None  # over max_files: the older delta was dropped


def test_revoked_hosts_and_tokens_and_no_store(served: Any) -> None:
    key, report, admin = _key(), _auth(served, "report"), _auth(served, "admin")
    fpr = signed_receipt(key, "db-01", 1)["key_sha256"]
    approved = served.post("/v1/hosts/db-01/approve", headers=admin, json={"key_sha256": fpr})  # in advance
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert served.post("/v1/receipts", headers=report, json=signed_receipt(key, "db-01", 1)).status_code == 201
    assert served.post("/v1/hosts/db-01/revoke", headers=admin).json()["state"] == "revoked"
    refused = served.post("/v1/receipts", headers=report, json=signed_receipt(key, "db-01", 2))
    assert refused.status_code == 403 and refused.json()["type"].endswith("/host-not-approved")
    assert served.post("/v1/hosts/nobody/approve", headers=admin, json={}).status_code == 404
    detail = served.get("/v1/hosts/db-01", headers=admin).json()
    assert detail["host"]["state"] == "revoked" and [r["seq"] for r in detail["receipts"]] == [1]
    jobs = served.post("/v1/jobs/refresh", headers=admin, json={})
    assert jobs.status_code == 404 and jobs.json()["type"].endswith("/no-store")
    assert served.get("/v1/jobs/" + "0" * 16, headers=admin).status_code == 404
    from chiron.cli import app as cli_app
    from chiron.cli import main

    token_id = served.tokens["read"].split("_")[1]
    cli_app.state.update({"verbose": False, "json": False, "log_format": "human"})
    with pytest.raises(SystemExit) as exc:
        main(["serve", "token", "revoke", token_id, "--db", str(served.db_path)])
    assert exc.value.code == 0
    assert served.get("/simple/", headers=_auth(served, "read")).status_code == 401  # at once
    with pytest.raises(SystemExit) as exc:
        main(["serve", "hosts", "approve", "x", "--key-sha256", "nothex", "--db", str(served.db_path)])
    assert exc.value.code == 2
