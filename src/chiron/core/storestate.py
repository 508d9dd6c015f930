"""The mirror store's ``state.json`` as a typed model, read in one place.

Every read of a store's state goes through :func:`read_state`. A file that is not what chiron wrote
(unreadable, not JSON, a field missing or of the wrong type, a path that leaves the store) is the
documented refusal (``StoreStateError``, exit 4) naming the file and the field, never a traceback:
chiron does not guess what a damaged store held. The on-disk shape is the one chiron has always
written (``chiron-mirror/1``); fields added later are optional, so older stores read as they are.

The store also records itself beside the root chain it signs under (:func:`write_claim`), so that
``chiron build`` with the same root directory can tell it would fork the store's version sequence.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chiron.core.fs import write_atomic
from chiron.errors import StoreStateError

STORE_FORMAT = "chiron-mirror/1"
CLAIM_FORMAT = "chiron-mirror-claim/1"  # a file format (like the state), not a command's output
RESTORE_HINT = "restore the store from the last appliance with chiron mirror restore"

_APPLIANCE_FILE = re.compile(r"appliances/[A-Za-z0-9][^/\x00-\x1f]*")
_LOCK_FILE = re.compile(r"locks/[0-9]+\.pylock\.toml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ResolvedFrom(_Model):
    """What the lock of a version was resolved from: the spec's sha256 and every locked project's
    index page (URL -> sha256), so a later run with identical pages can skip pip."""

    spec: str
    pages: dict[str, str]
    yanked: list[str] = Field(default_factory=list)


class VersionRecord(_Model):
    """One version the store signed (or restored)."""

    metadata_version: Annotated[int, Field(ge=1)]
    version: str
    created: str | None = None
    file: str  # STORE-relative: appliances/NAME-VERSION-N.pex
    sha256: str
    size: Annotated[int, Field(ge=0)]
    content_key: str
    lock: str  # STORE-relative: locks/N.pylock.toml
    downloaded: Annotated[int, Field(ge=0)] = 0
    bytes_downloaded: Annotated[int, Field(ge=0)] = 0
    resolved_from: ResolvedFrom | None = None
    restored_from: str | None = None
    pruned: bool = False
    root_version: Annotated[int, Field(ge=1)] | None = None  # the newest root it was signed under

    def as_json(self) -> dict[str, Any]:
        """The record as chiron writes it: optional fields only when they say something."""
        data = self.model_dump(mode="json")
        for name in ("restored_from", "root_version", "created"):
            if data[name] is None:
                del data[name]
        if not data["pruned"]:
            del data["pruned"]
        if data["resolved_from"] is None:
            if self.restored_from is None:
                data["resolved_from"] = {}  # a refresh that recorded no index pages
            else:
                del data["resolved_from"]
        return data

    @field_validator("resolved_from", mode="before")
    @classmethod
    def _empty(cls, v: object) -> object:
        return None if v == {} else v  # chiron writes {} for "not recorded"

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        # Prune deletes this path: it must name a file in STORE/appliances, nothing outside the store.
        if not _APPLIANCE_FILE.fullmatch(v):
            raise ValueError(f"'{v}' is not a file under appliances/")
        return v

    @field_validator("lock")
    @classmethod
    def _lock(cls, v: str) -> str:
        if not _LOCK_FILE.fullmatch(v):
            raise ValueError(f"'{v}' is not locks/N.pylock.toml")
        return v


class StoreState(_Model):
    """``STORE/state.json``: the appliance a store serves, where its spec is, and every version."""

    format: Literal["chiron-mirror/1"]
    name: str
    spec: str
    base: str | None = None
    files_dir: str | None = None
    policy: str | None = None  # a policy given with --policy, remembered for later runs
    root: str | None = None  # a root chain directory used instead of the spec's trust.root (restore)
    keys: dict[str, list[str]]
    versions: Annotated[list[VersionRecord], Field(min_length=1)]

    @field_validator("versions")
    @classmethod
    def _increasing(cls, v: list[VersionRecord]) -> list[VersionRecord]:
        numbers = [r.metadata_version for r in v]
        if numbers != sorted(set(numbers)):
            raise ValueError("metadata versions are not strictly increasing")
        return v

    @property
    def latest(self) -> VersionRecord:
        return self.versions[-1]

    def dump(self) -> bytes:
        data = self.model_dump(mode="json")
        if data["root"] is None:
            del data["root"]
        data["versions"] = [v.as_json() for v in self.versions]
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def damaged(path: Path, field: str, problem: str) -> StoreStateError:
    return StoreStateError(f"{path}: damaged store state: {field}: {problem}", hint=RESTORE_HINT)


def parse_state(raw: bytes, path: Path) -> StoreState:
    """Validate the bytes of a state file; StoreStateError names the file and the first bad field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise damaged(path, "(file)", f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise damaged(path, "(top level)", f"is {type(data).__name__}, not an object")
    if data.get("format") != STORE_FORMAT:
        raise damaged(path, "format", f"is {data.get('format')!r}, not {STORE_FORMAT!r}")
    try:
        return StoreState.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise damaged(path, _where(tuple(err["loc"])), msg) from None


def read_state(path: Path) -> StoreState | None:
    """The state at ``path``; None when there is none (a new store)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise damaged(path, "(file)", "is a directory") from None
    except OSError as exc:
        raise damaged(path, "(file)", f"cannot be read: {exc.strerror}") from None
    return parse_state(raw, path)


def write_state(path: Path, state: StoreState) -> None:
    """The commit point of every store operation: one atomic write."""
    write_atomic(path, state.dump())


# ---------------------------------------------------------------- the claim beside the root chain


class StoreClaim(_Model):
    """``ROOTDIR/chiron-mirror-NAME.json``: a store signs appliance NAME under this root chain."""

    format: Literal["chiron-mirror-claim/1"]
    store: str
    name: str
    root_fingerprint: str
    metadata_version: int


def claim_path(root_dir: Path, name: str) -> Path:
    return root_dir / f"chiron-mirror-{name}.json"


def write_claim(root_dir: Path, store: Path, name: str, root_fingerprint: str, version: int) -> str | None:
    """Record the store beside its root chain directory; returns a note when that cannot be done
    (a read-only root directory only loses the early refusal in ``chiron build``)."""
    data: dict[str, Any] = {
        "format": CLAIM_FORMAT,
        "store": str(store),
        "name": name,
        "root_fingerprint": root_fingerprint,
        "metadata_version": version,
    }
    path = claim_path(root_dir, name)
    try:
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")
    except OSError as exc:
        return f"cannot record the store in {path} ({exc.strerror}): chiron build cannot warn about forking it"
    return None


def find_claim(root_dir: Path, name: str, root_fingerprint: str) -> tuple[Path, StoreState] | None:
    """The live store that claims appliance ``name`` under this root (first root's fingerprint), with
    its state; None when there is no claim, or it is stale (the store is gone, or now holds another
    appliance or root)."""
    path = claim_path(root_dir, name)
    try:
        claim = StoreClaim.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError):  # absent, unreadable or not a claim: nothing to go by
        return None
    if claim.name != name or claim.root_fingerprint != root_fingerprint:
        return None
    store = Path(claim.store)
    state = read_state(store / "state.json")
    if state is None or state.name != name:
        return None
    try:
        first = (store / "tuf" / "root" / "1.root.json").read_bytes()
    except OSError:
        return None
    if hashlib.sha256(first).hexdigest() != root_fingerprint:
        return None
    return store, state
