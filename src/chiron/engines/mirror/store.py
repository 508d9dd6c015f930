"""The store directory: its paths, its lock, its typed state, the sweep of what killed runs left, and
the public TUF state it keeps (root chain and latest metadata)."""

from __future__ import annotations

import re
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from chiron.archive.layout import METADATA_PREFIX, root_member_version, root_version
from chiron.archive.reader import ArchiveReader
from chiron.core import filelock as _lockfile
from chiron.core.fs import write_atomic
from chiron.core.storestate import StoreState, read_state, write_state
from chiron.errors import Refused, UsageError
from chiron.sources.cache import PARTIAL
from chiron.trust import metadata as _trust

_VERSIONED = re.compile(r"-([0-9]+)\.(?:pex|pyz|delta)(?:\.sig)?$|^([0-9]+)\.(?:pylock\.toml|policy\.json)$")
MAX_METADATA = 64 << 20  # a metadata member larger than this is not what chiron wrote


@dataclass(frozen=True)
class Store:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def oci(self) -> Path:
        return self.root / "oci"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def appliances(self) -> Path:
        return self.root / "appliances"

    def state(self) -> StoreState | None:
        """The typed state; None for a new store; StoreStateError (exit 4) when it is damaged."""
        self._check_dir()
        return read_state(self.state_file)

    def _check_dir(self) -> None:
        if (self.root.exists() or self.root.is_symlink()) and not self.root.is_dir():
            raise UsageError(f"{self.root}: the store is not a directory", hint="give --store a directory")

    def write_state(self, state: StoreState) -> None:
        write_state(self.state_file, state)

    def locked(self, op: str) -> AbstractContextManager[None]:
        self._check_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        return _lockfile.hold(
            self.root / ".lock", op, hint="another refresh or restore is running on this store; let it finish"
        )

    def root_chain(self) -> list[bytes]:
        """The root chain the store last signed with (tuf/root/N.root.json, by version)."""
        stored = sorted(
            (p for p in self.tuf.glob("root/*.root.json") if root_version(p.name)),
            key=lambda p: root_version(p.name) or 0,
        )
        return [p.read_bytes() for p in stored]

    def sweep(self, state: StoreState | None) -> int:
        """Remove what killed runs left (under the lock only): chiron's own temporary files, and a
        version that was built but never recorded (a run that died before writing state.json), so that
        nothing unrecorded can be mistaken for, or shipped as, a signed version."""
        removed = 0
        for d in (self.artifacts, self.appliances, self.locks, self.tuf, self.tuf / "root", self.root):
            if d.is_dir():
                for p in d.iterdir():
                    if _temporary(p):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                        removed += 1
        newest = state.latest.metadata_version if state else 0
        for d in (self.appliances, self.locks):
            for p in d.glob("*") if d.is_dir() else ():
                m = _VERSIONED.search(p.name)
                if m and int(m.group(1) or m.group(2)) > newest:
                    p.unlink()  # built after the last recorded version: an orphan of a killed run
                    removed += 1
        if state and removed and (self.root / state.latest.file).is_file():
            save_tuf(self, self.root / state.latest.file, None)  # the public metadata of the recorded latest
        return removed


def _temporary(p: Path) -> bool:
    """A file or directory chiron writes only while it works (never the store's own data)."""
    name = p.name
    if name.startswith(PARTIAL):
        return not _resumable(p)
    return name.startswith(".") and (
        name.endswith((".tmp", ".partial")) or name.startswith(".tool-") or name == ".pending.pylock.toml"
    )


def _resumable(p: Path) -> bool:
    """A partial download named by its pinned sha256: the next fetch continues it."""
    digest = p.name.removeprefix(PARTIAL)
    return p.name.startswith(PARTIAL) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def is_root_member(name: str) -> bool:
    """``metadata/N.root.json``: a version of the root chain (not targets, snapshot or timestamp)."""
    return root_member_version(name) is not None


def save_tuf(store: Store, archive: Path, chain: list[bytes] | None) -> None:
    """Record the root chain and the latest targets/snapshot/timestamp (public metadata only)."""
    for i, data in enumerate(chain or [], start=1):
        write_atomic(store.tuf / "root" / f"{i}.root.json", data)
    with ArchiveReader(archive) as reader:
        for m in reader.layout.members:
            if m.name.startswith(METADATA_PREFIX) and not is_root_member(m.name):
                write_atomic(store.tuf / m.name.removeprefix(METADATA_PREFIX), reader.read(m.name, MAX_METADATA))


def check_same_trust(store: Store, chain: list[bytes]) -> int:
    """The spec's root chain must extend the store's: same first root, no versions dropped. Returns
    how many root versions the store has signed with (0 for a new store)."""
    stored = store.root_chain()
    if not stored:
        return 0
    if stored[0] != chain[0]:
        raise Refused(
            f"the spec's trust.root is a different root of trust than {store.root} was signed with",
            hint="point trust.root at the store's root chain (tuf/root/) or its successors",
        )
    for i, data in enumerate(stored[: len(chain)]):
        if data != chain[i]:
            raise Refused(
                f"the spec's root version {i + 1} differs from the one {store.root} already signed with "
                f"({store.tuf / 'root' / f'{i + 1}.root.json'})",
                hint="hosts trust the store's chain: extend it (chiron keys rotate), never replace a version",
            )
    if len(chain) < len(stored):
        raise Refused(
            f"the spec's trust.root has {len(chain)} root versions, the store already signed with {len(stored)}",
            hint=f"use the full chain: {store.tuf / 'root'}",
        )
    return len(stored)


def root_info(chain: list[bytes]) -> dict[str, object]:
    """The fingerprints to publish: the first root's (what build prints) and the newest root's."""
    newest = _trust.parse_root(chain[-1], "root").signed.version
    return {
        "root_fingerprint": _trust.fingerprint(chain[0]),
        "newest_root": {"version": newest, "sha256": _trust.fingerprint(chain[-1])},
    }
