"""chiron report without a browser: over appliances the simulator signs in milliseconds, a hostile one
(names with markup, control and bidirectional characters, very long names, odd licences) is escaped, a
report is the same bytes when built twice, verification comes first, and expiry is measured."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sim import Sim

from chiron.engines.report import ReportOptions, make_report, render, write_report
from chiron.engines.report.charts import history, licences, package_sizes
from chiron.engines.report.model import Version
from chiron.errors import FormatError, UsageError, VerificationError

from helpers import make_wheel

# Tags and attributes the report itself writes; anything else in the output came from an input.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "a", "header", "p", "h1", "h2", "h3", "span", "nav", "ul",
    "li", "main", "section", "dl", "div", "dt", "dd", "code", "table", "thead", "tbody", "tr", "th", "td", "strong",
    "br", "figure", "figcaption", "svg", "g", "rect", "text", "footer",
}  # fmt: skip
ALLOWED_ATTRS = {
    "lang", "charset", "name", "content", "http-equiv", "class", "href", "id", "role", "aria-label",
    "aria-labelledby", "tabindex", "scope", "colspan", "xmlns", "viewbox", "width", "height", "x", "y", "rx",
    "text-anchor", "preserveaspectratio", "data-label",
}  # fmt: skip

HOSTILE_NAME = "<script>alert('name')</script>"
LONG_NAME = "a" * 5000
ODD_LICENCES = {
    "evil": "</td><script>alert(1)</script>",
    "ansi": "MIT\x1b[31m red \x1b[0m",
    "bidi": "GPL\u202eTIM",
    "quote": "\"onmouseover='alert(1)'",
}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.hrefs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for k, v in attrs:
            self.attrs.add(k)
            if k == "href":
                self.hrefs.add(v or "")


def _pylock(packages: list[dict[str, Any]], envs: dict[str, list[str]]) -> bytes:
    """A lock as chiron writes it (the parts inspect, diff and report read); strings as TOML basic strings."""
    q = json.dumps
    out = ['lock-version = "1.0"', 'created-by = "chiron"', ""]
    for p in packages:
        out += ["[[packages]]", f"name = {q(p['name'])}", f"version = {q(p['version'])}"]
        out.append("wheels = [" + ", ".join(f"{{ name = {q(w)}, size = {n} }}" for w, n in p["wheels"]) + "]")
        out.append("")
    out.append("[tool.chiron.environments]")
    out += [f"{q(env)} = [{', '.join(q(pin) for pin in pins)}]" for env, pins in envs.items()]
    return ("\n".join(out) + "\n").encode()


def _sbom(packages: list[dict[str, Any]]) -> bytes:
    components = [
        {
            "type": "library",
            "name": p["name"],
            "version": p["version"],
            "licenses": [{"license": {"name": p["licence"]}}] if p["licence"] else [],
        }
        for p in packages
    ]
    return json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": components}).encode()


def build(
    sim: Sim,
    out: Path,
    packages: list[tuple[str, str, str, bytes]],
    *,
    env: str = "cp311",
    images: list[dict[str, Any]] | None = None,
    sbom: bool = True,
    **manifest: Any,
) -> Path:
    """An appliance carrying ``packages`` (name, version, licence, wheel bytes) for one environment."""
    out.parent.mkdir(parents=True, exist_ok=True)
    members: dict[str, bytes] = {}
    locked, pins, req = [], [], [f"# chiron lock for environment {env}"]
    for i, (name, version, licence, data) in enumerate(packages):
        wheel = f"pkg{i}-{version}-py3-none-any.whl"
        members[f"wheels/{wheel}"] = data
        locked.append({"name": name, "version": version, "licence": licence, "wheels": [(wheel, len(data))]})
        pins.append(f"{name}=={version}")
        req.append(f"{name}=={version} \\\n    --hash=sha256:{hashlib.sha256(data).hexdigest()}")
    members["lock/pylock.toml"] = _pylock(locked, {env: pins})
    members[f"lock/requirements-{env}.txt"] = ("\n".join(req) + "\n").encode()
    if sbom:
        members["sbom/cyclonedx.json"] = _sbom(locked)
    fields = {
        "environments": [
            {"name": env, "python_version": "3.11", "implementation": "cp", "platforms": ["manylinux_2_17_x86_64"]}
        ],
        "images": images or [],
        **manifest,
    }
    return sim.appliance(out, members, manifest=fields, name=manifest.get("name", "demo"))


def _options(archive: Path, **kw: Any) -> ReportOptions:
    return ReportOptions(archive=archive, output=archive.with_suffix(".html"), **kw)


@pytest.fixture()
def sim(tmp_path: Path) -> Sim:
    return Sim()


def _root(sim: Sim, tmp_path: Path) -> Path:
    root = tmp_path / "1.root.json"
    root.write_bytes(sim.root)
    return root


def test_a_hostile_appliance_is_escaped(sim: Sim, tmp_path: Path) -> None:
    """Names with markup, control and bidirectional characters, very long names and odd licences are
    shown as text: no element or attribute of the report comes from the appliance."""
    packages = [
        (HOSTILE_NAME, "1.0", ODD_LICENCES["evil"], b"w1"),
        (LONG_NAME, "2.0<b>", ODD_LICENCES["ansi"], b"w2" * 500),
        ("bidi", "3.0", ODD_LICENCES["bidi"], b"w3"),
        ("quoted", "4.0", ODD_LICENCES["quote"], b"w4"),
    ]
    images = [
        {"ref": "<img src=x onerror=alert(1)>", "digest": "sha256:<i>", "platforms": ["<svg onload=x>"], "size": 3}
    ]
    archive = build(
        sim,
        tmp_path / "evil.pex",
        packages,
        env="<svg onload=alert(2)>",
        images=images,
        description="<iframe src=//example.invalid></iframe>\u202e",
    )
    html = render(make_report(_options(archive, root_file=_root(sim, tmp_path)))).decode()
    parser = Tags()
    parser.feed(html)
    assert parser.tags <= ALLOWED_TAGS, parser.tags - ALLOWED_TAGS
    assert parser.attrs <= ALLOWED_ATTRS, parser.attrs - ALLOWED_ATTRS
    assert all(h.startswith("#") for h in parser.hrefs), parser.hrefs  # only links within the report
    lowered = html.lower()
    for raw in ("<script", "<img", "<iframe", "<svg onload", "<b>", '"onmouseover'):
        assert raw not in lowered, raw
    assert "&#34;onmouseover=&#39;alert(1)&#39;" in html  # a quote cannot end an attribute
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in html  # shown, as text
    assert "\x1b" not in html and "\u202e" not in html  # controls and bidi overrides shown as escapes
    assert r"MIT\x1b[31m red \x1b[0m" in html and r"GPL\u202eTIM" in html
    assert "a" * 200 + "\u2026 (4800 more characters)" in html  # long names are cut, saying by how much
    assert "a" * 201 not in html.replace("a" * 200 + "\u2026", "")
    # The page forbids every fetch and script even if something got through.
    assert "default-src 'none'" in html and "<script" not in lowered


def test_a_report_is_the_same_bytes_when_built_twice(sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of "now", of the path or of dictionary order gets into a report: the same appliance,
    reported from two places at two times, gives the same bytes."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # the "as of" day; everything else is the input's
    wheels = tmp_path / "w"
    pkgs = [
        (n, "1.0", lic, make_wheel(wheels, n, "1.0", license=lic).read_bytes())
        for n, lic in (("zeta", "MIT"), ("alpha", "BSD-3-Clause"), ("mid", "MIT"))
    ]
    old = build(sim, tmp_path / "a" / "demo-1.pex", pkgs[:2])
    new = build(sim, tmp_path / "a" / "demo-2.pex", pkgs[1:])
    (tmp_path / "b").mkdir()
    for f in (old, new):
        shutil.copyfile(f, tmp_path / "b" / f.name)
    root = _root(sim, tmp_path)
    first = write_report(ReportOptions(new, tmp_path / "one.html", against=old, root_file=root))
    write_report(
        ReportOptions(
            tmp_path / "b" / new.name, tmp_path / "two.html", against=tmp_path / "b" / old.name, root_file=root
        )
    )
    one, two = (tmp_path / "one.html").read_bytes(), (tmp_path / "two.html").read_bytes()
    assert one == two and first.size == len(one)
    assert b"zeta" in one and b"Removed (1)" in one and b"Added (1)" in one  # the changelog is in it
    assert str(tmp_path).encode() not in one  # no path of the machine that made it
    assert b"Expiry is measured from 2026-01-01" in one


def test_what_the_report_shows(sim: Sim, tmp_path: Path) -> None:
    """Summary, roles with thresholds and key types, packages per environment with hashes, images,
    the changelog (upgrade, licence change, image digest), and the charts as SVG."""
    wheels = tmp_path / "w"
    a1 = make_wheel(wheels, "alpha", "1.0", license="MIT").read_bytes()
    a2 = make_wheel(wheels, "alpha", "1.1", license="Apache-2.0").read_bytes()
    b1 = make_wheel(wheels, "beta", "1.0", license="MIT").read_bytes()
    img = {"ref": "registry.example/app:1", "platforms": ["linux/amd64"], "size": 5 << 20}
    old = build(
        sim, tmp_path / "old.pex", [("alpha", "1.0", "MIT", a1)], images=[{**img, "digest": "sha256:" + "1" * 64}]
    )
    new = build(
        sim,
        tmp_path / "new.pex",
        [("alpha", "1.1", "Apache-2.0", a2), ("beta", "1.0", "MIT", b1)],
        images=[{**img, "digest": "sha256:" + "2" * 64}],
    )
    report = make_report(_options(new, against=old, root_file=_root(sim, tmp_path), as_of=date(2000, 1, 1)))
    a = report.appliance
    assert a.verification.verified and a.metadata_version == sim.version
    assert {r.role: (r.threshold, r.keys, r.key_types) for r in a.roles}["timestamp"] == (1, 1, ("ed25519",))
    [env] = a.environments
    assert [(p.name, p.version, p.licence, p.files[0].sha256) for p in env.packages] == [
        ("alpha", "1.1", "Apache-2.0", hashlib.sha256(a2).hexdigest()),
        ("beta", "1.0", "MIT", hashlib.sha256(b1).hexdigest()),
    ]
    changes = report.changes
    assert changes is not None
    assert [(c.name, c.kind) for c in changes.packages] == [("alpha", "upgraded"), ("beta", "added")]
    assert [(c.name, c.old_licence, c.new_licence) for c in changes.licence_changes] == [("alpha", "MIT", "Apache-2.0")]
    assert [(i.ref, i.kind) for i in changes.images] == [("registry.example/app:1", "changed")]
    html = render(report).decode()
    for text in ("Apache-2.0", hashlib.sha256(a2).hexdigest(), "registry.example/app:1", "sha256:" + "2" * 64):
        assert text in html
    assert html.count("<svg") == 2 and 'id="chart-sizes"' in html and 'id="chart-licences"' in html
    assert "@media print" in html and "Reviewed by" in html


def test_expiry_is_measured_against_the_timestamps_half_life(tmp_path: Path) -> None:
    """A role with less left than half the timestamp's validity is marked; an expired one too."""
    sim = Sim()
    sim.expires = {"root": timedelta(days=365), "targets": timedelta(days=3), "snapshot": timedelta(days=30)}
    sim.expires["timestamp"] = timedelta(days=10)  # half-life: 5 days
    archive = build(sim, tmp_path / "demo.pex", [("alpha", "1.0", "MIT", b"x")])
    today = sim.now.date()
    report = make_report(_options(archive, root_file=_root(sim, tmp_path), as_of=today))
    states = {r.role: r.state for r in report.appliance.roles}
    assert report.appliance.half_life_days == 5.0
    assert states == {"root": "ok", "targets": "short", "snapshot": "ok", "timestamp": "ok"}
    later = make_report(_options(archive, root_file=_root(sim, tmp_path), as_of=today + timedelta(days=8)))
    assert {r.role: r.state for r in later.appliance.roles} == {
        "root": "ok",
        "targets": "expired",
        "snapshot": "ok",
        "timestamp": "short",
    }
    html = render(later).decode()
    assert "Expiring soon:" in html and "less than the half-life" in html


def test_it_verifies_first_and_says_plainly_when_it_did_not(sim: Sim, tmp_path: Path) -> None:
    archive = build(sim, tmp_path / "demo.pex", [("alpha", "1.0", "MIT", b"x")])
    other = Sim()
    wrong = tmp_path / "other.root.json"
    wrong.write_bytes(other.root)
    with pytest.raises(VerificationError):
        make_report(_options(archive, root_file=wrong))
    tampered = tmp_path / "tampered.pex"
    data = bytearray(archive.read_bytes())
    data[data.index(b"alpha==1.0")] ^= 0x20  # one byte of a signed member
    tampered.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        make_report(_options(tampered, root_file=_root(sim, tmp_path)))
    unverified = render(make_report(_options(tampered, verify=False))).decode()
    assert "NOT verified." in unverified and "Verified</strong>" not in unverified
    with pytest.raises(UsageError, match="exclude each other"):
        make_report(_options(archive, verify=False, root_file=wrong))
    with pytest.raises(UsageError, match="the appliance itself"):
        write_report(ReportOptions(archive, archive))
    (tmp_path / "link.html").symlink_to(archive)
    with pytest.raises(UsageError, match="the appliance itself"):
        write_report(ReportOptions(archive, tmp_path / "link.html"))
    with pytest.raises(UsageError, match="is a directory"):
        write_report(ReportOptions(archive, tmp_path, root_file=_root(sim, tmp_path)))
    assert archive.read_bytes()[:2] == b"#!"  # the appliance was not overwritten


def test_an_appliance_without_an_sbom_takes_licences_from_its_wheels(sim: Sim, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", "alpha", "1.0", license="Zlib").read_bytes()
    archive = build(
        sim, tmp_path / "demo.pex", [("alpha", "1.0", "", wheel), ("junk", "1.0", "", b"not a zip")], sbom=False
    )
    report = make_report(_options(archive, root_file=_root(sim, tmp_path)))
    assert [(p.name, p.licence) for p in report.appliance.packages] == [("alpha", "Zlib"), ("junk", "")]
    assert report.appliance.sbom is None


def test_charts_are_sorted_bounded_and_stable(sim: Sim, tmp_path: Path) -> None:
    packages = [(f"p{i:02d}", "1.0", "MIT" if i % 2 else "BSD", bytes(i * 10 + 1)) for i in range(20)]
    archive = build(sim, tmp_path / "demo.pex", packages)
    a = make_report(_options(archive, root_file=_root(sim, tmp_path))).appliance
    sizes = package_sizes(a, top=5)
    assert sizes is not None
    assert [b.full for b in sizes.bars] == ["p19 1.0", "p18 1.0", "p17 1.0", "p16 1.0", "p15 1.0", "15 other packages"]
    assert sizes.bars[0].width > sizes.bars[1].width > 0
    lic = licences(a)
    assert lic is not None and [(b.full, b.value) for b in lic.bars] == [("BSD", 10), ("MIT", 10)]
    versions = tuple(Version(n, f"1.0+{n}", "", 100 * n, f"f{n}", False, n == 3) for n in (2, 1, 3))
    hist = history(versions)
    assert hist is not None and [b.value for b in hist.bars] == [100, 200, 300] and hist.bars[-1].highlight


def _store(tmp_path: Path, archives: list[Path], verdicts: dict[int, dict[str, Any]]) -> Path:
    """A mirror store's state.json recording ``archives`` as versions 1..N, and the verdicts given."""
    store = tmp_path / "store"
    (store / "locks").mkdir(parents=True)
    versions = [
        {
            "metadata_version": n,
            "version": f"1.0.0+{n}",
            "created": "2026-01-01T00:00:00Z",
            "file": f"appliances/{a.name}",
            "sha256": hashlib.sha256(a.read_bytes()).hexdigest(),
            "size": a.stat().st_size,
            "content_key": "k",
            "lock": f"locks/{n}.pylock.toml",
            "resolved_from": {},
        }
        for n, a in enumerate(archives, 1)
    ]
    state = {"format": "chiron-mirror/1", "name": "demo", "spec": "/x/appliance.toml", "keys": {}, "versions": versions}
    (store / "state.json").write_text(json.dumps(state))
    for n, doc in verdicts.items():
        (store / "locks" / f"{n}.policy.json").write_text(json.dumps(doc))
    return store


def _verdict(archive: Path, **over: Any) -> dict[str, Any]:
    return {
        "format": "chiron-policy-verdict/1",
        "appliance_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "verdict": "passed",
        "policy": "/srv/policy.toml",
        "policy_sha256": "0" * 64,
        "rules": {"vulnerabilities.ignore": ["CVE-1"], "sources.sdists": False},
        "osv_records": 3,
        "accepted": [
            {"id": "GHSA-1", "aliases": ["CVE-1"], "package": "alpha", "version": "1.0", "summary": "<i>x</i>"}
        ],
        **over,
    }


def test_the_store_shows_versions_and_the_recorded_policy_verdict(sim: Sim, tmp_path: Path) -> None:
    one = build(sim, tmp_path / "demo-1.pex", [("alpha", "1.0", "MIT", b"a")])
    two = build(sim, tmp_path / "demo-2.pex", [("alpha", "1.0", "MIT", b"a" * 100)])
    store = _store(tmp_path, [one, two], {2: _verdict(two)})
    report = make_report(_options(two, store=store, root_file=_root(sim, tmp_path)))
    assert report.store is not None and report.store.verdict is not None
    assert [(v.metadata_version, v.this) for v in report.store.versions] == [(1, False), (2, True)]
    assert [(a.id, a.aliases, a.package) for a in report.store.verdict.advisories] == [("GHSA-1", ("CVE-1",), "alpha")]
    html = render(report).decode()
    assert "GHSA-1" in html and "&lt;i&gt;x&lt;/i&gt;" in html and 'id="chart-history"' in html
    older = make_report(_options(one, store=store, root_file=_root(sim, tmp_path)))
    assert older.store is not None and older.store.verdict is None and "no policy verdict" in older.store.note
    stranger = build(sim, tmp_path / "other.pex", [("beta", "1.0", "MIT", b"b")])
    alone = make_report(_options(stranger, store=store, root_file=_root(sim, tmp_path)))
    assert alone.store is not None and "not one of the versions" in alone.store.note


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"appliance_sha256": "1" * 64}, "another appliance file"),
        ({"format": "something/1"}, "not a chiron-policy-verdict/1"),
        ({"accepted": [{"id": 1}]}, "accepted[0]"),
        ({"osv_records": True}, "osv_records"),
    ],
)
def test_a_damaged_verdict_is_refused_naming_the_file(
    sim: Sim, tmp_path: Path, over: dict[str, Any], problem: str
) -> None:
    one = build(sim, tmp_path / "demo-1.pex", [("alpha", "1.0", "MIT", b"a")])
    store = _store(tmp_path, [one], {1: _verdict(one, **over)})
    with pytest.raises(FormatError, match=re.escape(problem)) as exc:
        make_report(_options(one, store=store, root_file=_root(sim, tmp_path)))
    assert "1.policy.json" in str(exc.value)
