"""The report as HTML: Jinja2 templates with autoescaping on for every template, whatever its name.

Every string from an appliance or a store goes through autoescaping (HTML) and, where it is shown, the
``shown`` filter: control and bidirectional characters become visible escapes (``core.text.plain``) and
a very long string is cut, saying how much was left out. The templates and the stylesheet are package
data, read with importlib.resources (so they work from the tool zip as from a directory); ``chiron
serve`` renders its pages with the same environment and the same partial templates.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING, Any

from chiron.core.text import plain
from chiron.engines.report import charts
from chiron.engines.report.model import Appliance, Report

if TYPE_CHECKING:
    import jinja2

MAX_SHOWN = 200  # characters of one name shown; the rest is counted, not shown


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """A string from an archive as it may be shown: non-printable characters escaped, cut at ``limit``."""
    text = plain(str(value))
    if len(text) > limit:
        return f"{text[:limit]}\u2026 ({len(text) - limit} more characters)"
    return text


def template_text(package: str, name: str) -> str | None:
    """A template (or stylesheet) shipped as package data in ``package``/templates, or None."""
    try:
        return resources.files(package).joinpath("templates", name).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def stylesheet() -> str:
    """The report's stylesheet (inline in the report; served as a file by chiron serve)."""
    text = template_text(__package__ or "chiron.engines.report", "report.css")
    if text is None:  # pragma: no cover - package data missing: a broken install
        raise FileNotFoundError("chiron.engines.report/templates/report.css")
    return text


def environment(*packages: str) -> jinja2.Environment:
    """A Jinja2 environment over the templates of ``packages`` (first wins), then the report's own."""
    import jinja2

    order = (*packages, __package__ or "chiron.engines.report")

    def load(name: str) -> str | None:
        for package in order:
            text = template_text(package, name)
            if text is not None:
                return text
        return None

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=True,  # every template, not only *.html: nothing from an archive is ever markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["shown"] = shown
    env.filters["size"] = charts.size_text
    env.filters["signed"] = _signed_size
    env.globals["charts_of"] = charts_of
    env.globals["licence_rows"] = licence_rows
    return env


@functools.cache
def _report_environment() -> jinja2.Environment:
    return environment()


def _signed_size(n: int) -> str:
    return ("+" if n > 0 else "\u2212" if n < 0 else "\u00b1") + charts.size_text(abs(n))


def charts_of(report: Report) -> list[charts.Chart]:
    """The charts a report draws, in order (those without data are left out)."""
    drawn = [charts.package_sizes(report.appliance), charts.licences(report.appliance)]
    if report.store is not None:
        drawn.append(charts.history(report.store.versions))
    return [c for c in drawn if c is not None]


def licence_rows(appliance: Appliance) -> list[tuple[str, list[str]]]:
    """(licence, package names) for each declared licence ("" for none), most used first."""
    rows: dict[str, list[str]] = {}
    for p in appliance.packages:
        rows.setdefault(p.licence, []).append(p.name)
    return sorted(((k, sorted(v)) for k, v in rows.items()), key=lambda kv: (-len(kv[1]), kv[0]))


def context(report: Report) -> dict[str, Any]:
    return {"report": report, "a": report.appliance}


def render(report: Report) -> bytes:
    """The self-contained report: one HTML document, stylesheet inline, no script, no fetch."""
    from markupsafe import Markup

    env = _report_environment()
    # The stylesheet is ours (package data), not input: inserted as it is, inside <style>.
    html = env.get_template("report.html").render(**context(report), css=Markup(stylesheet()))  # noqa: S704
    return html.encode("utf-8")
