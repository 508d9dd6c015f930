"""The mirror store on the connected host: refresh it on a schedule, restore it from an appliance, or
set one up from an appliance (init).

A store is one directory (docs/mirror.md)::

    state.json                   what the store holds (core.storestate.StoreState): the appliance, spec,
                                 key URIs, every version built
    .lock                        held by a refresh or restore (flock: a killed run never leaves it stuck)
    artifacts/sha256/xx/<sha>    wheels (and sdists), content-addressed; artifacts/tool/ caches tool zips
    oci/                         one OCI layout with every image blob fetched so far
    locks/<N>.pylock.toml        the lock of metadata version N
    locks/<N>.policy.json        the policy verdict of version N (chiron-policy-verdict/1, for chiron report)
    tuf/root/<V>.root.json       the root chain signed with; tuf/{targets,snapshot,timestamp}.json: latest
    appliances/<name>-<version>-<N>.pex (+ .sig, + .delta)
    spec/                        the appliance's own spec, lock and [[files]] (restore or init without --spec)

A refresh re-resolves the spec, fetches only what the store lacks, applies the policy, and builds
version N+1 only when something changed (``--force`` builds anyway, e.g. to renew expiring metadata
or to ship a key rotation). Every file is written atomically and ``state.json`` is written last, so a
killed run leaves the store at version N; the next run reuses every artifact that finished
downloading.

The package is cut along the steps: ``store`` (paths, lock, sweep, TUF state), ``resolve`` (the lock
and the index pages), ``refresh`` (the steps of one run), ``commit`` (recording a version),
``restore`` (restore and init), ``prune`` and ``status``.
"""

from chiron.core.storestate import STORE_FORMAT, StoreState, VersionRecord

from .model import RefreshOptions, RefreshResult, content_key, release_version
from .prune import prune
from .refresh import refresh
from .restore import init, restore
from .status import status
from .store import Store

__all__ = [
    "STORE_FORMAT",
    "RefreshOptions",
    "RefreshResult",
    "Store",
    "StoreState",
    "VersionRecord",
    "content_key",
    "init",
    "prune",
    "refresh",
    "release_version",
    "restore",
    "status",
]
