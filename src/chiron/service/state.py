"""What every request works with: settings, database, catalog, metrics, delta cache and jobs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from chiron.engines.deltacache import DeltaCache
from chiron.service.catalog import Catalog, Entry
from chiron.service.db import Database
from chiron.service.files import Dist
from chiron.service.jobs import JobRunner
from chiron.service.observe import Metrics
from chiron.service.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    catalog: Catalog
    metrics: Metrics
    deltas: DeltaCache
    jobs: JobRunner | None
    _extract: threading.Lock = field(default_factory=threading.Lock)
    # Rendered index pages by (appliance file and identity, page, format, link prefix): a page changes only
    # with its appliance (a new identity) or a yank (which clears this).
    pages: dict[tuple[object, ...], tuple[bytes, str]] = field(default_factory=dict)
    _yanks: dict[str, str] | None = None

    def yanks(self) -> dict[str, str]:
        """Yanked files (read once; yanking goes through this process, which then forgets them)."""
        if self._yanks is None:
            self._yanks = self.db.yanks()
        return self._yanks

    def forget_pages(self) -> None:
        self._yanks = None
        self.pages.clear()

    def accel_appliance(self, entry: Entry) -> str:
        """The nginx internal URI of a whole appliance file (X-Accel-Redirect mode)."""
        return f"{self.settings.x_accel_redirect}{entry.source}/{entry.rel}"

    def accel_file(self, entry: Entry, dist: Dist) -> str:
        """The nginx internal URI of a wheel, copied once out of its verified appliance (re-hashed as it
        is copied) into the cache, since nginx serves whole files, not regions of one."""
        dest = self.settings.cache_dir / "files" / dist.sha256[:2] / dist.sha256
        with self._extract:
            if not dest.is_file() or dest.stat().st_size != dist.size:
                entry.handle.copy(dist.member, dest)
        return f"{self.settings.x_accel_redirect}files/{dist.sha256[:2]}/{dist.sha256}"
