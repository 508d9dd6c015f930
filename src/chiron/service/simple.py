"""The simple repository API: PEP 503 HTML and PEP 691 JSON (API version 1.1, PEP 700), with PEP 658
and 714 core metadata, PEP 592 yanking and content negotiation as PyPI does it. Pure: given the
files of one appliance, make the page bytes.

File URLs are relative (``../../files/SHA256/NAME``), so the index works unchanged under any path
prefix a front end adds, and name the file by its signed sha256: a file URL is immutable.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

from packaging.version import InvalidVersion, Version

from chiron.service.files import Dist

API_VERSION = "1.1"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
_OFFERS = {
    JSON_V1: "json",
    "application/vnd.pypi.simple.latest+json": "json",
    HTML_V1: "html-v1",
    "application/vnd.pypi.simple.latest+html": "html-v1",
    TEXT_HTML: "html",
}
MEDIA = {"json": JSON_V1, "html-v1": HTML_V1, "html": "text/html; charset=utf-8"}


def negotiate(accept: str | None, fmt: str | None = None) -> str | None:
    """Which representation to answer with (json, html-v1, html), or None for 406.

    ``?format=`` overrides the Accept header (as on PyPI); no Accept, or ``*/*``, gets HTML, which
    every installer understands.
    """
    if fmt:
        return _OFFERS.get(fmt)
    if not accept:
        return "html"
    best: tuple[float, int, str] | None = None
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        choice = _OFFERS.get(media.lower()) or ("html" if media in ("*/*", "text/*") else None)
        if choice is None or q <= 0:
            continue
        if best is None or (q, -i) > (best[0], best[1]):
            best = (q, -i, choice)
    return best[2] if best else None


def project_list(projects: Iterable[str], fmt: str) -> bytes:
    names = sorted(set(projects))
    if fmt == "json":
        return _json({"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]})
    links = "\n".join(f'    <a href="{html.escape(n)}/">{html.escape(n)}</a><br/>' for n in names)
    return _html("Simple index", links)


def _version_key(v: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(v))
    except InvalidVersion:
        return (0, v)


def project_page(
    project: str, dists: list[Dist], fmt: str, files_prefix: str, yanked: dict[str, str] | None = None
) -> bytes:
    """One project's page; ``files_prefix`` is the relative way from the page to ``files/``."""
    yanked = yanked or {}
    dists = sorted(dists, key=lambda d: (_version_key(d.version), d.filename))
    if fmt == "json":
        files = []
        for d in dists:
            meta: dict[str, str] | bool = {"sha256": d.metadata_sha256} if d.metadata_sha256 else False
            files.append(
                {
                    "filename": d.filename,
                    "url": f"{files_prefix}{d.sha256}/{d.filename}",
                    "hashes": {"sha256": d.sha256},
                    "requires-python": d.requires_python,
                    "core-metadata": meta,
                    "dist-info-metadata": meta,
                    "yanked": yanked.get(d.filename, False),
                    "size": d.size,
                }
            )
        versions = sorted({d.version for d in dists}, key=_version_key)
        return _json({"meta": {"api-version": API_VERSION}, "name": project, "files": files, "versions": versions})
    links = []
    for d in dists:
        attrs = ""
        if d.requires_python:
            attrs += f' data-requires-python="{html.escape(d.requires_python)}"'
        if d.metadata_sha256:
            attrs += f' data-dist-info-metadata="sha256={d.metadata_sha256}"'
            attrs += f' data-core-metadata="sha256={d.metadata_sha256}"'
        if d.filename in yanked:
            attrs += f' data-yanked="{html.escape(yanked[d.filename])}"'
        href = f"{files_prefix}{d.sha256}/{html.escape(d.filename)}#sha256={d.sha256}"
        links.append(f'    <a href="{href}"{attrs}>{html.escape(d.filename)}</a><br/>')
    return _html(f"Links for {html.escape(project)}", "\n".join(links))


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


def _html(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n{body}\n  </body>\n</html>\n"
    ).encode()
