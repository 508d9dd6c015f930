"""Charts drawn by chiron as inline SVG: horizontal bars (size by package, licences) and columns
(appliance size across a store's versions). Only geometry is computed here; the templates draw it with
autoescaping, so a hostile package name is text inside <text>, never markup.

Every number is rounded to a fixed precision and every input is sorted, so the same data always
draws the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from chiron.engines.report.model import Appliance, Version

TOP = 15  # bars in the size chart; the rest are summed into one "others" bar
LABEL_CHARS = 24  # bar labels longer than this are cut (the full name is in the tables and the <title>)


@dataclass(frozen=True)
class Bar:
    label: str  # as drawn (possibly cut)
    full: str  # the whole label, for <title> (a tooltip and what a screen reader reads)
    value: int
    text: str  # the value as shown ("1.2 MiB", "3 packages")
    x: float
    y: float
    width: float
    height: float
    highlight: bool = False


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    description: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    kind: str  # "bars" (horizontal) or "columns"
    axis: str  # what the values measure, for the data table's heading


def size_text(n: int) -> str:
    """Bytes as a person reads them (binary units, one decimal)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "\u2026"


def _hbars(chart_id: str, title: str, description: str, axis: str, rows: list[tuple[str, int, str]]) -> Chart:
    """Horizontal bars, one row each: label column on the left, the bar and its value on the right."""
    width, label_w, row_h, gap, value_w = 520, 170, 22, 6, 84
    top = max((v for _l, v, _t in rows), default=0) or 1
    span = width - label_w - value_w
    bars = tuple(
        Bar(
            label=_cut(label),
            full=label,
            value=value,
            text=text,
            x=label_w,
            y=i * (row_h + gap),
            width=round(max(1.0, span * value / top), 1),
            height=row_h,
        )
        for i, (label, value, text) in enumerate(rows)
    )
    return Chart(chart_id, title, description, width, max(1, len(rows)) * (row_h + gap), bars, "bars", axis)


def package_sizes(appliance: Appliance, top: int = TOP) -> Chart | None:
    """The largest packages by the bytes the appliance carries of them (every file of each)."""
    packages = sorted(appliance.packages, key=lambda p: (-p.size, p.name))
    if not packages:
        return None
    rows = [(f"{p.name} {p.version}", p.size, size_text(p.size)) for p in packages[:top]]
    rest = packages[top:]
    if rest:
        size = sum(p.size for p in rest)
        rows.append((f"{len(rest)} other packages", size, size_text(size)))
    return _hbars(
        "chart-sizes",
        "Size by package",
        f"The {min(top, len(packages))} largest of {len(packages)} packages by the bytes of their files",
        "size",
        rows,
    )


def licences(appliance: Appliance) -> Chart | None:
    """How many packages declare each licence ("none declared" for those that declare none)."""
    counts: dict[str, int] = {}
    for p in appliance.packages:
        key = p.licence or "none declared"
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    rows = [
        (name, n, f"{n} package{'s' if n != 1 else ''}")
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return _hbars(
        "chart-licences", "Licences", f"{len(appliance.packages)} packages by declared licence", "packages", rows
    )


def history(versions: tuple[Version, ...]) -> Chart | None:
    """The appliance's size at each version the store recorded (the last 30), this one highlighted."""
    shown = sorted(versions, key=lambda v: v.metadata_version)[-30:]
    if not shown:
        return None
    height, col_w, gap = 180, 28, 10
    top = max(v.size for v in shown) or 1
    bars = tuple(
        Bar(
            label=f"#{i + 1}",
            full=f"version {v.version} (metadata version {v.metadata_version})",
            value=v.size,
            text=size_text(v.size),
            x=i * (col_w + gap),
            y=round(height - max(1.0, height * v.size / top), 1),
            width=col_w,
            height=round(max(1.0, height * v.size / top), 1),
            highlight=v.this,
        )
        for i, v in enumerate(shown)
    )
    return Chart(
        "chart-history",
        "Appliance size across the store's versions",
        f"The size of the last {len(shown)} versions the store signed, oldest first; this one highlighted",
        len(shown) * (col_w + gap),
        height,
        bars,
        "columns",
        "size",
    )
