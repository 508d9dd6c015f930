"""The pages of chiron serve in-process (FastAPI's TestClient over appliances the simulator signs): log-in
with a token into a session cookie, CSRF on every form, the scopes of each page, no open redirect, and
names from an appliance escaped. The real browser tests are tests/integration/test_report_browser.py."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sim import Sim
from test_report_unit import HOSTILE_NAME, build

from chiron.service import tokens
from chiron.service.app import create_app
from chiron.service.db import Database
from chiron.service.settings import Settings

from helpers import make_wheel, signed_receipt


@pytest.fixture()
def site(tmp_path: Path) -> Any:
    """A service over two versions of an appliance (the second with a hostile package name)."""
    sim = Sim()
    wheels = tmp_path / "wheels"
    (tmp_path / "apps").mkdir()
    a1 = make_wheel(wheels, "alpha", "1.0").read_bytes()
    a2 = make_wheel(wheels, "alpha", "1.1", license="Apache-2.0").read_bytes()
    build(sim, tmp_path / "apps" / "demo-1.pex", [("alpha", "1.0", "MIT", a1)], version="1.0.0+1")
    build(sim, tmp_path / "apps" / "demo-2.pex", [("alpha", "1.1", "Apache-2.0", a2), (HOSTILE_NAME, "1", "MIT", b"x")])
    (tmp_path / "root.json").write_bytes(sim.root)
    db = Database(tmp_path / "serve.db")
    made = {}
    for scopes in (["read"], ["report"], ["admin"]):
        t = tokens.new_token()
        db.add_token(t.id, t.secret_sha256, "-".join(scopes), scopes, None)
        made["+".join(scopes)] = t
    settings = Settings(
        db=tmp_path / "serve.db",
        cache_dir=tmp_path / "cache",
        appliances=tmp_path / "apps",
        root_file=tmp_path / "root.json",
        json_log=False,
        rescan_every=0.2,
    )
    with TestClient(create_app(settings), follow_redirects=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.tokens = made  # type: ignore[attr-defined]
        client.db = db  # type: ignore[attr-defined]
        yield client


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def log_in(client: Any, token: str, next_page: str = "ui/") -> Any:
    form = client.get(f"/ui/login?next={next_page}")
    assert form.status_code == 200
    return client.post("/ui/login", data={"token": token, "csrf": _csrf(form.text), "next": next_page})


def test_pages_send_a_person_to_the_log_in_form(site: Any) -> None:
    assert site.get("/").headers["location"] == "ui/"
    for path, back in (
        ("/ui/", "ui/"),
        ("/ui/fleet", "ui/fleet"),
        ("/ui/diff?from=1&to=2", "ui/diff%3Ffrom%3D1%26to%3D2"),
    ):
        r = site.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].endswith(f"ui/login?next={back}")
    # A token in the Authorization header is for the API: the pages take only the session cookie.
    headers = {"Authorization": f"Bearer {site.tokens['admin'].text}"}
    assert site.get("/ui/", headers=headers).status_code == 303


def test_log_in_makes_a_strict_http_only_session_and_refuses_bad_tokens(site: Any) -> None:
    bad = log_in(site, "chiron_000000000000_" + "A" * 43)
    assert bad.status_code == 401 and "not valid" in bad.text and "chiron_session" not in site.cookies
    report_only = log_in(site, site.tokens["report"].text)
    assert report_only.status_code == 403 and "the pages need read" in report_only.text
    good = log_in(site, site.tokens["read"].text)
    assert good.status_code == 303 and good.headers["location"] == "../ui/"
    cookie = next(c for c in good.headers.get_list("set-cookie") if c.startswith("chiron_session="))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs and "secure" not in attrs  # plain HTTP here
    assert "samesite=strict" in cookie.lower()
    stored = site.db.query("SELECT id_sha256 FROM sessions")
    assert len(stored) == 1 and stored[0]["id_sha256"] != site.cookies["chiron_session"]  # only its sha256
    page = site.get("/ui/")
    assert page.status_code == 200 and "demo" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_the_log_in_form_needs_its_own_csrf_token(site: Any) -> None:
    form = site.get("/ui/login")
    token = site.tokens["read"].text
    no_field = site.post("/ui/login", data={"token": token})
    assert no_field.status_code == 403 and "chiron_session" not in site.cookies
    site.cookies.clear()
    no_cookie = site.post("/ui/login", data={"token": token, "csrf": _csrf(form.text)})
    assert no_cookie.status_code == 403 and "chiron_session" not in site.cookies


def test_a_form_without_its_csrf_token_is_refused(site: Any) -> None:
    log_in(site, site.tokens["read"].text)
    csrf = _csrf(site.get("/ui/").text)
    refused = site.post("/ui/logout", data={})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = site.post("/ui/logout", data={"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")})
    assert wrong.status_code == 403
    assert site.get("/ui/").status_code == 200  # still logged in
    out = site.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and site.db.query("SELECT * FROM sessions") == []
    assert site.get("/ui/").status_code == 303


def test_each_page_needs_the_scope_of_its_api(site: Any) -> None:
    log_in(site, site.tokens["read"].text)
    listing = site.get("/ui/")
    assert listing.status_code == 200 and "1.0.0+1" in listing.text and "Show the changes" in listing.text
    one = site.get("/ui/appliances/latest?name=demo")
    assert one.status_code == 200 and "alpha" in one.text and 'id="chart-sizes"' in one.text
    assert "Changes from demo 1.0.0+1" in one.text  # against the version before it
    diff = site.get("/ui/diff?name=demo&from=1&to=2")
    assert diff.status_code == 200 and "Upgraded (1)" in diff.text and "Licence changes (1)" in diff.text
    download = site.get("/ui/appliances/2/report.html?name=demo")
    assert download.status_code == 200 and download.headers["content-disposition"].startswith("attachment;")
    assert download.text.startswith("<!DOCTYPE html>") and "default-src 'none'" in download.text
    assert site.get("/ui/appliances/99?name=demo").status_code == 404
    for admin_page in ("/ui/fleet", "/ui/jobs"):
        r = site.get(admin_page)
        assert r.status_code == 403 and "needs admin" in r.text, admin_page
    site.cookies.clear()
    log_in(site, site.tokens["admin"].text)
    assert site.get("/ui/fleet").status_code == 200
    jobs = site.get("/ui/jobs")
    assert jobs.status_code == 200 and "without <code>--store</code>" in jobs.text
    assert site.post("/ui/jobs/refresh", data={"csrf": _csrf(jobs.text)}).status_code == 404


def test_revoking_the_token_ends_its_sessions(site: Any) -> None:
    log_in(site, site.tokens["read"].text)
    assert site.get("/ui/").status_code == 200
    assert site.db.revoke_token(site.tokens["read"].id)
    assert site.get("/ui/").status_code == 303


def test_no_open_redirect_after_log_in(site: Any) -> None:
    for target in ("https://example.invalid/", "//example.invalid/", "ui/../../x:y", "ui/logout"):
        site.cookies.clear()
        r = log_in(site, site.tokens["read"].text, next_page=target.replace("/", "%2F").replace(":", "%3A"))
        assert r.status_code == 303 and r.headers["location"] in ("../ui/",), (target, r.headers["location"])
    site.cookies.clear()
    assert log_in(site, site.tokens["read"].text, "ui/fleet").headers["location"] == "../ui/fleet"


def test_names_from_an_appliance_are_escaped_on_the_pages(site: Any) -> None:
    log_in(site, site.tokens["read"].text)
    for path in ("/ui/appliances/2?name=demo", "/ui/diff?name=demo&from=1&to=2"):
        html = site.get(path).text
        assert "<script" not in html.lower() and "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in html


# What the fleet page's hosts report besides their last operation and warnings (signed_receipt has the rest).
FLEET_FIELDS: dict[str, Any] = {
    "appliance": {"name": "demo", "version": "1.0.0+1", "release": "r", "environment": None, "installed": None},
    "metadata_versions": {"targets": 1},
    "audit_head": None,
    "chiron_version": "0",
}


def test_the_fleet_page_shows_what_the_receipts_say(site: Any) -> None:
    """Hosts with their release, last receipt, whether they are behind, and a failed last operation; the
    strings a receipt carries are escaped like any other."""
    admin = {"Authorization": f"Bearer {site.tokens['admin'].text}"}
    for host, op, warnings in (
        ("web-01", {"op": "install", "result": "ok"}, []),
        ("web-02", {"op": "upgrade", "result": "failed", "detail": "<script>x</script>"}, ["disk \u202e full"]),
    ):
        key = Ed25519PrivateKey.generate()
        fields = {**FLEET_FIELDS, "last_operation": op, "warnings": warnings}
        assert (
            site.post("/v1/enrolments", json=signed_receipt(key, host, 1, **fields), headers=admin).status_code == 202
        )
        assert site.post(f"/v1/hosts/{host}/approve", json={}, headers=admin).status_code == 200
        assert site.post("/v1/receipts", json=signed_receipt(key, host, 2, **fields), headers=admin).status_code == 201
    log_in(site, site.tokens["admin"].text)
    page = site.get("/ui/fleet").text
    rows = re.findall(r'<tr class="host">(.*?)</tr>', page, re.S)
    assert [re.search(r'<th scope="row">(.*?)</th>', r).group(1) for r in rows] == ["web-02", "web-01"]  # type: ignore[union-attr]
    assert (
        "upgrade: failed" in rows[0] and "&lt;script&gt;x&lt;/script&gt;" in rows[0] and r"disk \u202e full" in rows[0]
    )
    assert "install: ok" in rows[1] and "behind" in rows[1] and "(receipt 2)" in rows[1]
    failed = site.get("/ui/fleet?show=failed").text
    assert "web-02" in failed and "web-01" not in failed
