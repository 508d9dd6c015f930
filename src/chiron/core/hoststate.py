"""Typed models of the host's state files: ``state.json``, ``txn.json``, ``floor.json``, the release
records (``releases/<id>/release.json``) and the audit head kept beside ``current``.

Every read of host state goes through :func:`read_model`, so a damaged file (not JSON, a list where
an object belongs, a wrong type, an unknown operation, a release id that is not one path segment)
is one ``HostStateError`` naming the file and the field, never a traceback. :func:`dump` writes the
exact bytes chiron has always written (sorted keys, two-space indent, a final newline), so hosts
installed by earlier versions keep working and the files stay byte-compatible.
"""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from chiron.errors import HostStateError

STATE_SCHEMA: Final = "chiron.host-state/1"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_STATE_FILE = 16 << 20  # far above any real state file; a bound on what reading a damaged one costs
RESTORE_HINT = "restore the state directory from backup: docs/runbooks/install-and-upgrade.md section 7"

# What chiron generates: NAME-VERSION-T[.N] (docs/host.md). One path segment, never '.', '..' or absolute.
_RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


def check_release_id(value: str) -> str:
    """A release id as chiron makes them: a safe, single path segment."""
    if not _RELEASE_ID.match(value) or value.endswith(".") or ".." in value:
        raise ValueError(f"'{value[:80]}' is not a release id (one path segment of letters, digits, '.', '_', '-')")
    return value


def _sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise ValueError("must be 64 lower-case hexadecimal digits")
    return value


def _time(value: str) -> str:
    if not _TIME.match(value):
        raise ValueError(f"'{value[:40]}' is not a time like 2025-01-31T12:00:00Z")
    parse_time(value)  # a real date, not 2025-13-45
    return value


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def format_time(when: datetime) -> str:
    return when.strftime(TIME_FORMAT)


ReleaseId = Annotated[str, AfterValidator(check_release_id)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
Time = Annotated[str, AfterValidator(_time)]
Role = Literal["root", "timestamp", "snapshot", "targets"]
MetadataFile = Literal["root.json", "timestamp.json", "snapshot.json", "targets.json"]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", populate_by_name=True)


class ReleaseRecord(_Model):
    """One release: ``releases/<id>/release.json`` and each entry of ``state.json``'s ``releases``."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str | None  # the appliance's signed build time (appliance.json)
    environment: str
    metadata_versions: dict[Role, Annotated[int, Field(ge=1)]]
    installed: Time
    installer: str
    archive: str
    targets_sha256: Sha256

    def created_time(self) -> datetime | None:
        try:
            return parse_time(self.created) if self.created else None
        except ValueError:
            return None


class HostState(_Model):
    """``state.json``: the releases, which is current and previous, digests of the trusted metadata."""

    schema_: Literal["chiron.host-state/1"] = Field(alias="schema")
    current: ReleaseId | None
    previous: ReleaseId | None
    releases: dict[ReleaseId, ReleaseRecord]
    metadata_digests: dict[MetadataFile, Sha256]

    @classmethod
    def empty(cls) -> HostState:
        """The state of a host with nothing recorded yet (before the first commit)."""
        return cls(schema_=STATE_SCHEMA, current=None, previous=None, releases={}, metadata_digests={})

    @model_validator(mode="after")
    def _known(self) -> HostState:
        for field in ("current", "previous"):
            rid = getattr(self, field)
            if rid is not None and rid not in self.releases:
                raise ValueError(f"{field}: release '{rid}' is not in releases")
        return self


class Txn(_Model):
    """``txn.json``: the operation in progress; present from staging to the end of the commit."""

    op: Literal["install", "upgrade", "adopt"]
    id: ReleaseId
    release: ReleaseRecord
    reference_time: Time
    keep_releases: int = Field(ge=2)


MAX_CHECK_OUTPUT = 2000  # characters of a live check's or hook's output kept in trial.json and the audit log
TrialPhase = Literal["on-trial", "reverting", "committed", "reverted", "failed"]


class CheckResult(_Model):
    """The last live check: when it ended, whether it passed, after how many attempts, and its output
    (bounded and escaped: it comes from the application)."""

    time: Time
    ok: bool
    attempts: int = Field(ge=0)
    output: str = Field(max_length=MAX_CHECK_OUTPUT + 2)


class Trial(_Model):
    """``trial.json``: the release brought into service after the switch and, once the trial ended, how.

    A separate file from state.json on purpose: a revert can put an older chiron in ``bin/chiron``,
    and an older tool reads state.json strictly; it never reads this file.

    ``phase`` is ``on-trial`` from just before the switch until the release is committed or reverted
    (``committed``, ``reverted``; ``failed`` when there was nothing to revert to); ``reverting`` while
    a revert is under way (a crash there is finished by the next run). ``deadline`` is when
    the trial must have ended: the live check's deadline, or ``upgrade --trial-until``'s (``external``:
    the release waits for ``chiron commit``). ``boot_id`` and ``pid`` tell a trial whose process died,
    or whose host rebooted, from one still running.
    """

    release: ReleaseId
    previous: ReleaseId | None
    phase: TrialPhase
    since: Time
    deadline: Time
    external: bool
    boot_id: str = Field(max_length=64)
    pid: int = Field(ge=0)
    last_check: CheckResult | None = None
    ended: Time | None = None
    reason: str | None = Field(default=None, max_length=4 * MAX_CHECK_OUTPUT)


class Floor(_Model):
    """``floor.json``: the time before which expiry is never judged."""

    floor: Time


class AuditHead(_Model):
    """``PREFIX/audit.head``: the audit log's last entry, kept outside the state directory so that
    restoring the state from a backup cannot hide that entries were lost."""

    seq: int = Field(ge=0)
    sha256: Sha256


M = TypeVar("M", bound=BaseModel)


def _where(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()) if p != "schema_") or "the top level"
    return f"field '{loc}'" if loc != "the top level" else loc


def damaged(path: Path, problem: str) -> HostStateError:
    """The one refusal for a damaged state file: ``PATH: PROBLEM (state damaged: restore ...)``."""
    return HostStateError(f"{path}: {problem}", hint=f"state damaged: {RESTORE_HINT}")


def read_bytes(path: Path) -> bytes | None:
    """A state file's bytes, or None when it does not exist; never blocks on a FIFO or reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise damaged(path, "is not a regular file")
        if st.st_size > MAX_STATE_FILE:
            raise damaged(path, f"is {st.st_size} bytes, far more than a state file holds")
        chunks, left = [], MAX_STATE_FILE + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_model(model: type[M], data: bytes, path: Path) -> M:
    """Validate ``data`` as ``model``; a damaged file is one HostStateError naming file and field."""
    try:
        return model.model_validate_json(data, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first.get("type") == "json_invalid":
            raise damaged(path, "is not valid JSON") from None
        msg = str(first.get("msg", "invalid")).replace("\n", " ").removeprefix("Value error, ")
        raise damaged(path, f"{_where(dict(first))}: {msg}") from None


def read_model(model: type[M], path: Path) -> M | None:
    """The model stored at ``path``, or None when the file does not exist."""
    data = read_bytes(path)
    return None if data is None else parse_model(model, data, path)


def dump(model: BaseModel) -> bytes:
    """The bytes chiron writes for a state file (unchanged since the first host-state format)."""
    data = model.model_dump(mode="json", by_alias=True)
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
