"""Install, upgrade and roll back appliances on an air-gapped host, crash-safely.

Layout (PREFIX):

    bin/chiron -> ../current/bin/chiron    the installed, trusted tool (verifies later archives)
    current -> releases/<id>               switched by one rename of a symlink (the commit point)
    releases/<id>/{venv,bin/chiron,release.json}
    audit.head                             the audit log's head, outside the state (a restore shows)
    state/    (or --state-dir)             lock, metadata/ (trusted TUF), floor.json, state.json,
                                           audit.jsonl, txn.json, staging/

Every operation takes the lock, first finishes or undoes an interrupted transaction (txn.json),
verifies everything before changing anything, builds the new release in ``releases/<id>`` (its final
path: venv scripts embed it), health-checks it and switches ``current``. Until the switch the old
release is untouched; after it, recovery only completes the bookkeeping. docs/host.md has the details.

The package is cut along the steps: ``paths`` (layout, modes, safe deletion), ``state`` (load, check,
lock, floor, commit; the files are typed by ``chiron.core.hoststate``), ``recovery`` (interrupted
transactions, adoption after a state restore, rollback), ``install`` (install/upgrade), ``release``
(staging, venv, tool), ``health``, ``images`` (the images seam and ``chiron images``), ``status``
(status, inventory), ``auditlog``, and bringing a release into service: ``activation`` (hooks, the
Compose project, the live check) and ``trial`` (trial, commit, revert).
"""

from chiron.core.hoststate import HostState, ReleaseRecord, Txn
from chiron.engines.host.auditlog import audit, audit_verify
from chiron.engines.host.images import installed_images
from chiron.engines.host.install import InstallOptions, install, upgrade
from chiron.engines.host.paths import KEPT_APPLIANCE, STEPS, Paths, check_host_dirs
from chiron.engines.host.recovery import adopt, commit_release, recover, recover_only, rollback, unknown_releases
from chiron.engines.host.release import find_uv, space_needed
from chiron.engines.host.result import HostResult
from chiron.engines.host.state import load_state, read_floor, read_txn
from chiron.engines.host.status import inventory, packages, status
from chiron.engines.host.trial import parse_until, read_trial

__all__ = [
    "KEPT_APPLIANCE",
    "STEPS",
    "HostResult",
    "HostState",
    "InstallOptions",
    "Paths",
    "ReleaseRecord",
    "Txn",
    "adopt",
    "audit",
    "audit_verify",
    "check_host_dirs",
    "commit_release",
    "find_uv",
    "install",
    "installed_images",
    "inventory",
    "load_state",
    "packages",
    "parse_until",
    "read_floor",
    "read_trial",
    "read_txn",
    "recover",
    "recover_only",
    "rollback",
    "space_needed",
    "status",
    "unknown_releases",
    "upgrade",
]
