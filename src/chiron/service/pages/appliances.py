"""Pages of what is served: the appliances and their versions, one appliance (the report's view, against
the version before it), the changes between any two versions, and the report itself as a file.

One renderer, two faces: these pages gather with ``engines.report`` from the verified handle the catalog
holds (every member re-hashed as it is read) and draw with the report's own partial templates.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections import OrderedDict
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from chiron.core.text import plain
from chiron.engines.report import Report, VerifiedReading, appliance, as_of_today, changes, render
from chiron.engines.report.model import Appliance, StoreView
from chiron.engines.report.store import store_view
from chiron.errors import ChironError
from chiron.service.auth import Svc
from chiron.service.catalog import Entry
from chiron.service.events import log_event
from chiron.service.pages.common import HEADERS, PageError, page
from chiron.service.pages.session import Session, viewer
from chiron.service.state import Services

router = APIRouter(include_in_schema=False)
Reader = Annotated[Session, viewer("read")]
Ref = Annotated[str | None, Query(max_length=300)]
_CACHE_SIZE = 32
_cache: OrderedDict[tuple[object, ...], Appliance] = OrderedDict()
_cache_lock = threading.Lock()


def _entry(svc: Services, ref: str, name: str | None = None) -> Entry:
    entry = svc.catalog.snapshot.find(ref, name)
    if entry is None:
        raise PageError(404, "Not found", f"no served appliance {plain(ref)}")
    return entry


def view(svc: Services, entry: Entry) -> Appliance:
    """The report's view of a served appliance (cached per verified file and day). What cannot be
    shown wakes the rescan, which verifies the file again and logs why on the server: the page names
    the file only, never the server's paths or errors."""
    why = entry.changed()
    if why is not None:
        svc.catalog.wake.set()
        raise PageError(503, "Not served now", f"{why}; it is verified again before it is shown")
    as_of = as_of_today()
    key = (entry.sha256, entry.fsig, as_of)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    if entry.trust is None:  # pragma: no cover - every catalog entry records its trust
        raise PageError(503, "Not served now", f"{entry.filename}: its verification is not recorded")
    try:
        shown = appliance(
            VerifiedReading(entry.handle),
            entry.trust,
            file=entry.filename,
            size=entry.size,
            sha256=entry.sha256,
            as_of=as_of,
        )
    except (ChironError, OSError) as exc:
        svc.catalog.wake.set()
        log_event("error", f"showing {entry.path}: {exc.diagnostics() if isinstance(exc, ChironError) else exc}")
        detail = f"{entry.filename}: cannot be read now; it is verified again before it is shown"
        raise PageError(503, "Cannot read the appliance", detail) from None
    with _cache_lock:
        _cache[key] = shown
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return shown


def _store(svc: Services, entry: Entry, admin: bool) -> StoreView | None:
    if svc.settings.store is None or entry.source != "store":
        return None
    try:
        store = store_view(svc.settings.store, entry.sha256)
    except ChironError:
        return None  # a damaged store state: /readyz says so; the page still shows the appliance
    return store if admin else _without_paths(store)


def _without_paths(store: StoreView) -> StoreView:
    """The verdict as a reader may see it: the policy file and the OSV database by their names (and
    the policy's sha256), not where they lie on the mirror host."""
    v = store.verdict
    if v is None:
        return store
    rules = tuple((k, PurePath(val).name if k == "vulnerabilities.osv_db" and val else val) for k, val in v.rules)
    policy = PurePath(v.policy).name if v.policy.startswith("/") else v.policy
    return dataclasses.replace(store, verdict=dataclasses.replace(v, policy=policy, rules=rules))


def _report(svc: Services, entry: Entry, admin: bool) -> Report:
    """The report of a served version, with the changes since the version before it (if one is served)."""
    older = [e for e in svc.catalog.snapshot.of(entry.name) if e.metadata_version < entry.metadata_version]
    this = view(svc, entry)
    diff = changes(view(svc, older[-1]), this) if older else None
    store = _store(svc, entry, admin)
    return Report(appliance=this, as_of=as_of_today().strftime("%Y-%m-%d"), changes=diff, store=store)


@router.get("/ui/", response_class=HTMLResponse)
def appliances(request: Request, svc: Svc, who: Reader) -> HTMLResponse:
    """Every appliance served, its versions newest first, and the files that did not verify (why: for
    an admin only)."""
    snapshot = svc.catalog.snapshot
    groups = [(name, list(reversed(snapshot.of(name))), snapshot.latest(name)) for name in snapshot.names()]
    failed = snapshot.failures(admin=who.allows("admin"))
    return page(request, "appliances.html", groups=groups, failed=failed, default=snapshot.default_name)


@router.get("/ui/appliances/{ref}", response_class=HTMLResponse)
def one(request: Request, svc: Svc, ref: str, who: Reader, name: Ref = None) -> HTMLResponse:
    """One appliance, as the report shows it."""
    entry = _entry(svc, ref, name)
    report = _report(svc, entry, who.allows("admin"))
    return page(request, "appliance.html", report=report, a=report.appliance, entry=entry)


_FILENAME = re.compile(r"[^A-Za-z0-9._+-]")


@router.get("/ui/appliances/{ref}/report.html")
def report_file(request: Request, svc: Svc, ref: str, who: Reader, name: Ref = None) -> Response:
    """The self-contained report of one appliance, as ``chiron report`` writes it, to download."""
    entry = _entry(svc, ref, name)
    report = _report(svc, entry, who.allows("admin"))
    filename = _FILENAME.sub("_", f"{entry.name}-{entry.version}-report.html")[:200]
    headers = {**HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(render(report), media_type="text/html; charset=utf-8", headers=headers)


@router.get("/ui/diff", response_class=HTMLResponse)
def diff(
    request: Request,
    svc: Svc,
    _who: Reader,
    name: Ref = None,
    old: Annotated[str, Query(alias="from", max_length=300)] = "",
    new: Annotated[str, Query(alias="to", max_length=300)] = "latest",
) -> HTMLResponse:
    """The changes between any two served versions of an appliance."""
    versions = svc.catalog.snapshot.of(name)
    if not old:
        raise PageError(400, "Choose two versions", "give the version to compare from (from=) and to (to=)")
    a, b = _entry(svc, old, name), _entry(svc, new, name)
    if a.name != b.name:
        raise PageError(400, "Different appliances", f"{plain(a.name)} and {plain(b.name)} are not one appliance")
    return page(
        request,
        "diff.html",
        changes=changes(view(svc, a), view(svc, b)),
        new=view(svc, b),
        versions=versions,
        old_ref=a,
        new_ref=b,
    )
