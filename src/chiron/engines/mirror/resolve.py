"""The refresh's lock: re-resolved with pip, unless every index page it depends on is unchanged."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from chiron.core.spec import LoadedSpec
from chiron.core.storestate import ResolvedFrom, VersionRecord
from chiron.errors import ArtifactError
from chiron.sources import lock as _lock
from chiron.sources.http import read_url

from .store import Store

_PAGE_HEADERS = {
    "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
    "Cache-Control": "max-age=0",  # as pip asks: a caching proxy must not answer "unchanged"
}


def resolve_lock(
    store: Store, loaded: LoadedSpec, latest: VersionRecord | None
) -> tuple[_lock.Lock, ResolvedFrom | None]:
    """The lock, re-resolved with pip unless nothing it could depend on has changed.

    pip reads every locked project's index page on each run (~15 ms each): most of a no-change
    refresh. So the store records the sha256 of those pages; when the spec is the same and every page
    is byte-identical, the previous lock is the answer pip would give, and pip is not run. Any
    change, an unreachable page, or a spec that uses find_links runs pip; a spec's fixed lock is
    used as it is.
    """
    spec = loaded.spec
    key = hashlib.sha256(loaded.raw).hexdigest()
    index = spec.python.index_url
    usable = bool(index and spec.python.requirements and not spec.python.find_links and loaded.lock_path is None)
    recorded = latest.resolved_from if latest else None
    pages_now = index_pages(list(recorded.pages)) if usable and recorded and recorded.spec == key else None
    if latest and recorded and pages_now and pages_now == recorded.pages:
        lock = _lock.read_pylock(store.root / latest.lock, spec)
        for pkg in lock.packages:
            pkg.yanked = pkg.name in recorded.yanked
        return lock, recorded
    lock = _lock.load_lock(loaded)
    if not (usable and index):
        return lock, None
    urls = [f"{index.rstrip('/')}/{pkg.name}/" for pkg in lock.packages]
    fetched = index_pages(urls)
    # A page read before pip ran that differs now changed during this run: pip may have seen
    # either version, so record nothing and let the next run resolve again.
    moved = pages_now and fetched and any(pages_now.get(u, h) != h for u, h in fetched.items())
    if fetched is None or moved:
        return lock, None
    return lock, ResolvedFrom(spec=key, pages=fetched, yanked=sorted(p.name for p in lock.packages if p.yanked))


def index_pages(urls: list[str]) -> dict[str, str] | None:
    """sha256 of each simple-index page (None if any cannot be read: then pip decides, and reports
    what is wrong with the index)."""

    def one(url: str) -> str:
        return hashlib.sha256(read_url(url, "index page", headers=_PAGE_HEADERS)).hexdigest()

    if not all(u.startswith(("http://", "https://")) for u in urls):
        return None
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(urls, pool.map(one, urls), strict=True))
    except ArtifactError:
        return None
