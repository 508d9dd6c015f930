"""chiron report and the pages of chiron serve in a real browser: Debian's chromium, headless, driven by
selenium through chromedriver. One mirror store refreshed twice (the second version upgrades beta and
lets a known vulnerability through its policy's ignore list), the report of it written by the real CLI,
and a service over the store with a host that sent receipts. Screenshots go under the test's tmp dir."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chiron.engines import host, mirror
from chiron.service.settings import Settings

from helpers import LocalIndex, Running, get_json, make_tokens, make_wheel, signed_receipt, write_spec

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Without the background-networking switches chromium reaches for the network at start (and is refused here).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
CHIRON = str(Path(sys.executable).parent / "chiron")
EPOCH = int(time.time()) - 3600
ADVISORY = {
    "id": "GHSA-test-0001",
    "aliases": ["CVE-2026-0001"],
    "summary": "beta reads <b>too much</b>",
    "affected": [{"package": {"ecosystem": "PyPI", "name": "beta"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "9.0"}]}]}],
}  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CHIRON, *args], capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, f"chiron {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


# What web-02 reports: its last upgrade failed (signed_receipt has the rest).
FAILED_UPGRADE: dict[str, Any] = {
    "appliance": {"name": "demo", "version": "1.0.0", "release": "r1", "environment": "cp311", "installed": None},
    "last_operation": {"time": "2026-01-02T03:00:00Z", "op": "upgrade", "result": "failed", "detail": "disk full"},
    "audit_head": None,
    "warnings": ["the last upgrade failed: disk full"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, keys: Path, tool_wheels: Path, tool_cache: Path) -> Iterator[Any]:
    """A store with two versions and a recorded policy verdict, its report, and a service over it with
    two hosts that sent receipts (one behind, one whose last upgrade failed)."""
    d = tmp_path_factory.mktemp("site")
    wheels = d / "upstream"
    make_wheel(wheels, "alpha", "1.0", deps=("beta>=1",), payload=b"\n# " + b"a" * 40000 + b"\n")
    make_wheel(wheels, "beta", "1.0", payload=b"\n# " + b"b" * 10000 + b"\n")
    index = LocalIndex(wheels)
    spec = write_spec(d / "spec", keys=keys, index_url=index.url, requirements=["alpha>=1.0"])
    (d / "spec" / "osv").mkdir()
    (d / "spec" / "osv" / "GHSA-test-0001.json").write_text(json.dumps(ADVISORY))
    (d / "spec" / "policy.toml").write_text('[vulnerabilities]\nosv_db = "osv"\nignore = ["CVE-2026-0001"]\n')
    store = d / "store"
    shutil.copytree(tool_cache, store / "artifacts" / "tool")

    def refresh() -> mirror.RefreshResult:
        return mirror.refresh(
            mirror.RefreshOptions(
                store=store, spec=spec, tool_wheels=tool_wheels, source_date_epoch=EPOCH, show_progress=False
            )
        )

    first = refresh()
    make_wheel(wheels, "beta", "1.1", license="Apache-2.0", payload=b"\n# " + b"c" * 30000 + b"\n")
    second = refresh()
    assert first.appliance and second.appliance and second.changed
    report = d / "report.html"
    out = run(
        "report", str(second.appliance), "--against", str(first.appliance), "--store", str(store), "-o", str(report)
    )
    assert "verified" in out.stdout and report.is_file()

    toks = make_tokens(d / "serve.db")
    settings = Settings(
        db=d / "serve.db",
        cache_dir=d / "cache",
        store=store,
        tool_wheels=tool_wheels,
        access_log=d / "access.jsonl",
        rescan_every=0.5,
    )
    svc = Running(settings)
    try:
        # web-01: a real host, installed from the first version, enrolled, approved, reporting.
        host.install(host.InstallOptions(archive=first.appliance, prefix=d / "web-01", root_file=keys / "1.root.json"))
        env = {**os.environ, "CHIRON_TOKEN": toks["host"]}
        receipt = ("receipt", "--prefix", str(d / "web-01"), "--server", svc.url, "--host-id", "web-01")
        assert run(*receipt, env=env, check=False).returncode == 4  # enrolment sent
        assert get_json(svc.url, "/v1/hosts/web-01/approve", toks["admin"], "POST", {})[0] == 200
        run(*receipt, env=env)
        # web-02: a host whose last upgrade failed, enrolled and approved the same way.
        key = Ed25519PrivateKey.generate()
        enrolment = signed_receipt(key, "web-02", 1, 0, **FAILED_UPGRADE)
        assert get_json(svc.url, "/v1/enrolments", toks["host"], "POST", enrolment)[0] == 202
        assert get_json(svc.url, "/v1/hosts/web-02/approve", toks["admin"], "POST", {})[0] == 200
        status, body = get_json(
            svc.url,
            "/v1/receipts",
            toks["host"],
            "POST",
            signed_receipt(key, "web-02", 2, first.metadata_version, **FAILED_UPGRADE),
        )
        assert status == 201, body
        svc.tokens = toks  # type: ignore[attr-defined]
        svc.report = report  # type: ignore[attr-defined]
        svc.versions = (first, second)  # type: ignore[attr-defined]
        svc.dir = d  # type: ignore[attr-defined]
        svc.keys = keys  # type: ignore[attr-defined]
        yield svc
    finally:
        svc.stop()
        index.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless chromium for the module, with its performance log (every network event) kept."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("NO chromium: apt-get install chromium chromium-driver (tests/provision.py does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def shots(tmp_path: Path, browser: Any) -> Any:
    """Save a screenshot of the whole page under the test's tmp dir; the paths are printed."""

    def shoot(name: str) -> Path:
        width = browser.execute_script("return window.innerWidth")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(width, min(max(height, 600), 6000))
        path = tmp_path / f"{name}-{width}.png"
        assert browser.save_screenshot(str(path)) and path.stat().st_size > 1000
        print(f"screenshot: {path}")
        return path

    browser.delete_all_cookies()
    browser.set_window_size(1280, 1000)
    yield shoot
    browser.set_window_size(1280, 1000)


def _text(browser: Any, css: str) -> str:
    return str(browser.find_element("css selector", css).text)


def _heading(browser: Any) -> str:
    """The page's h1, or "" while the page is being reloaded."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return _text(browser, "h1")
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _count(browser: Any, css: str) -> int:
    return len(browser.find_elements("css selector", css))


def _fits(browser: Any, width: int = 390) -> None:
    """At ``width`` px the page needs no horizontal scroll."""
    browser.set_window_size(width, 900)
    scroll, client = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert client <= width and scroll <= client, f"{browser.current_url}: {scroll} px wide in a {client} px window"


# What every page is checked for: one h1, no skipped heading level, a label for every field, and the
# colours of every element that shows text (with its first opaque background) for the contrast ratio.
_A11Y = """
const out = {h1: document.querySelectorAll('h1').length, skips: [], unlabelled: [], colours: []};
let last = 0;
for (const h of document.querySelectorAll('h1, h2, h3, h4, h5, h6')) {
  const level = Number(h.tagName[1]);
  if (last && level > last + 1) out.skips.push(h.tagName + ' ' + h.textContent.slice(0, 40));
  last = level;
}
for (const f of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (!f.labels.length && !f.getAttribute('aria-label')) out.unlabelled.push(f.name || f.id);
}
const background = (el) => {
  for (; el && el.nodeType === 1; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    if (c && !c.endsWith(', 0)') && c !== 'transparent') return c;
  }
  return 'rgb(255, 255, 255)';
};
for (const el of document.querySelectorAll('body *:not(svg):not(svg *)')) {
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (own && el.getClientRects().length) out.colours.push([el.tagName, getComputedStyle(el).color, background(el)]);
}
return out;
"""


def _luminance(css: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"[0-9.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _accessible(browser: Any) -> None:
    """One h1, headings in order, every field labelled, and text at a contrast of at least 4.5:1 (WCAG AA)."""
    found = browser.execute_script(_A11Y)
    where = browser.current_url
    assert found["h1"] == 1 and not found["skips"] and not found["unlabelled"], (
        where,
        found["skips"],
        found["unlabelled"],
    )
    low = []
    for tag, fg, bg in found["colours"]:
        a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
        if (a + 0.05) / (b + 0.05) < 4.5:
            low.append((tag, fg, bg))
    assert found["colours"] and not low, (where, low[:5])


def _requests(browser: Any) -> list[str]:
    """The URLs the browser asked for since the last call (from its performance log)."""
    out = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            out.append(message["params"]["request"]["url"])
    return out


def test_the_report_file_shows_packages_changes_and_charts_and_fetches_nothing(
    site: Any, browser: Any, shots: Any, tmp_path: Path
) -> None:
    _requests(browser)  # what the browser did before: not the report's
    url = site.report.as_uri()
    browser.get(url)
    assert "demo" in _text(browser, "h1") and "Verified" in _text(browser, ".banner")
    packages = _text(browser, "#packages")
    for name in ("alpha", "beta", "Apache-2.0"):
        assert name in packages
    changes = _text(browser, "#changes")
    assert "Upgraded (1)" in changes and "beta" in changes and "1.1" in changes
    assert "Licence changes (1)" in changes
    policy = _text(browser, "#policy")
    assert "GHSA-test-0001" in policy and "CVE-2026-0001" in policy and "<b>too much</b>" in policy  # as text
    assert _count(browser, "#policy b") == 0
    # The charts: SVG drawn by chiron, one bar per package, per licence, per version in the store.
    assert _count(browser, "#chart-sizes svg rect") == 2
    assert _count(browser, "#chart-licences svg rect") >= 1
    assert _count(browser, "#chart-history svg rect") == 2 and _count(browser, "#chart-history .bar.this") == 1
    assert _count(browser, "script") == 0
    _accessible(browser)
    shots("report")
    # Not one request other than the file itself: no script, font, image or stylesheet from anywhere.
    assert set(_requests(browser)) == {url}
    # It prints (what the board signs): chromium's own PDF of it.
    pdf = base64.b64decode(browser.execute_cdp_cmd("Page.printToPDF", {"printBackground": False})["data"])
    assert pdf.startswith(b"%PDF") and len(pdf) > 5000
    (tmp_path / "report.pdf").write_bytes(pdf)
    _fits(browser)
    shots("report")


def _after(browser: Any, click: Any) -> None:
    """Click (or submit) and wait for the next page: a form's navigation is not waited for by the click."""
    from selenium.webdriver.support.ui import WebDriverWait

    marker = browser.find_element("tag name", "html")
    click()
    WebDriverWait(browser, 30).until(lambda b: _stale(marker))


def _stale(element: Any) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        # Asked in the middle of the navigation, chromium answers "unknown error: ... Node with given
        # id does not belong to the document" for the old page's element: gone, as stale means.
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def _log_in(browser: Any, site: Any, token: str, page: str = "ui/") -> None:
    browser.get(site.url + page)
    assert "/ui/login" in browser.current_url
    field = browser.find_element("id", "token")
    field.send_keys(token)
    _after(browser, field.submit)


def test_log_in_with_a_good_token_and_refusal_with_a_bad_one(site: Any, browser: Any, shots: Any) -> None:
    _log_in(browser, site, "chiron_000000000000_" + "A" * 43)
    assert "/ui/login" in browser.current_url and "not valid" in _text(browser, "#login-error")
    assert browser.get_cookie("chiron_session") is None
    shots("login-refused")
    _log_in(browser, site, site.tokens["read"])
    assert browser.current_url == site.url + "ui/"
    cookie = browser.get_cookie("chiron_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    assert "chiron_session" not in browser.execute_script("return document.cookie")
    listing = _text(browser, "main")
    first, second = site.versions
    assert first.version in listing and second.version in listing
    shots("appliances")
    # The diff form, by keyboard-free clicks: from the first version to the second.
    _after(browser, browser.find_element("css selector", "form.diff-form button").click)
    assert "/ui/diff" in browser.current_url and "Upgraded (1)" in _text(browser, "#changes")
    shots("diff")
    browser.get(f"{site.url}ui/appliances/latest")
    assert "GHSA-test-0001" in _text(browser, "#policy") and _count(browser, "#chart-sizes svg rect") == 2
    # A reader sees the policy file by its name, not where it lies on the mirror host.
    assert "policy.toml" in _text(browser, "#policy") and "/spec/policy.toml" not in _text(browser, "#policy")
    shots("appliance")
    # A read token does not see the fleet (its API needs admin).
    browser.get(f"{site.url}ui/fleet")
    assert "needs admin" in _text(browser, "main")


def test_a_form_posted_without_its_csrf_token_is_refused(site: Any, browser: Any, shots: Any) -> None:
    _log_in(browser, site, site.tokens["read"])
    browser.execute_script("document.querySelector('form[action$=\"ui/logout\"] input[name=csrf]').remove()")
    _after(browser, browser.find_element("css selector", 'form[action$="ui/logout"] button').click)
    assert "Form refused" in _text(browser, "h1") and "CSRF" in _text(browser, "main")
    shots("csrf-refused")
    browser.get(f"{site.url}ui/")
    assert "/ui/login" not in browser.current_url  # still logged in: nothing was done
    _after(browser, browser.find_element("css selector", 'form[action$="ui/logout"] button').click)
    assert "/ui/login" in browser.current_url and browser.get_cookie("chiron_session") is None


def test_the_fleet_page_lists_the_hosts_that_sent_receipts(site: Any, browser: Any, shots: Any) -> None:
    _log_in(browser, site, site.tokens["admin"], "ui/fleet")
    assert browser.current_url == site.url + "ui/fleet"
    rows = {r.find_element("css selector", "th").text: r.text for r in browser.find_elements("css selector", "tr.host")}
    assert set(rows) == {"web-01", "web-02"}
    assert "behind" in rows["web-01"] and "(receipt 2)" in rows["web-01"] and "install: ok" in rows["web-01"]
    assert "upgrade: failed" in rows["web-02"] and "disk full" in rows["web-02"]
    assert re.search(r"2 hosts", _text(browser, ".summary-counts")) and "1 failed" in _text(browser, ".summary-counts")
    shots("fleet")
    _after(browser, browser.find_element("link text", "hosts whose last operation failed").click)
    assert [r.find_element("css selector", "th").text for r in browser.find_elements("css selector", "tr.host")] == [
        "web-02"
    ]


def test_a_refresh_job_started_from_the_page_shows_its_log(site: Any, browser: Any, shots: Any) -> None:
    _log_in(browser, site, site.tokens["admin"], "ui/jobs")
    _after(browser, browser.find_element("css selector", 'form[action$="ui/jobs/refresh"] button').click)
    assert re.search(r"/ui/jobs/[0-9a-f]{16}$", browser.current_url), browser.current_url
    deadline = time.monotonic() + 300
    while not re.search(r"succeeded|failed", _heading(browser)):  # the page reloads itself while it runs
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(1)
    assert "succeeded" in _text(browser, "h1"), _text(browser, "main")
    assert "nothing changed upstream" in _text(browser, "main") and _text(browser, "pre.log") != "(no lines yet)"
    shots("job")
    browser.get(f"{site.url}ui/jobs")
    assert "succeeded" in _text(browser, "table.jobs")


def test_the_tool_an_appliance_installs_writes_the_same_report(site: Any, tmp_path: Path) -> None:
    """The tool inside the appliance (templates and stylesheet as package data) writes the report, and
    the same inputs give the same bytes as this checkout's chiron."""
    first, second = site.versions
    args = [str(second.appliance), "--against", str(first.appliance), "--root", str(site.keys / "1.root.json")]
    args += ["--as-of", "2026-01-01"]
    run("report", *args, "-o", str(tmp_path / "here.html"))
    tool = subprocess.run(
        [str(site.dir / "web-01" / "bin" / "chiron"), "report", *args, "-o", str(tmp_path / "tool.html")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tool.returncode == 0, tool.stderr
    assert (tmp_path / "tool.html").read_bytes() == (tmp_path / "here.html").read_bytes()


def test_pages_fit_a_390_px_screen(site: Any, browser: Any, shots: Any) -> None:
    """Every page at 390 px wide: no horizontal scroll (tables become cards), and a screenshot of each;
    at both widths one h1, headings in order, every field labelled, and text contrast of 4.5:1 or more."""
    _log_in(browser, site, site.tokens["admin"])
    first, second = site.versions
    pages = {
        "appliances": "ui/",
        "appliance": "ui/appliances/latest",
        "diff": f"ui/diff?from={first.metadata_version}&to={second.metadata_version}",
        "fleet": "ui/fleet",
        "jobs": "ui/jobs",
    }
    for name, page in pages.items():
        browser.get(site.url + page)
        _accessible(browser)
        _fits(browser)
        _accessible(browser)  # the cards of a narrow screen too
        shots(name)
        browser.set_window_size(1280, 1000)
    browser.delete_all_cookies()
    browser.get(site.url + "ui/login")
    _accessible(browser)
    _fits(browser)
    shots("login")
