"""Request and response bodies of the service API (the OpenAPI schema is made from these).

Request models are strict (unknown fields refused, every string and list bounded), so what reaches
an engine has the shape it expects; the byte limit on each body is enforced before parsing
(observe.BodyLimitMiddleware).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
HostId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Short = Annotated[str, StringConstraints(max_length=200)]
Text = Annotated[str, StringConstraints(max_length=500)]
Stamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- appliances and deltas


class ApplianceInfo(BaseModel):
    name: str
    version: str
    metadata_version: int = Field(description="The targets metadata version: what hosts compare.")
    file: str = Field(description="File name; download at /appliances/FILE.")
    url: str
    signature_url: str | None
    size: int
    sha256: str = Field(description="sha256 of the whole file; also its ETag.")
    created: str
    expires: str = Field(description="When the first of its metadata roles expires; not served after.")
    latest: bool
    index_url: str = Field(description="The PEP 503/691 index of its wheels.")
    wheels: int


class FailedAppliance(BaseModel):
    path: str
    problem: str


class ApplianceList(BaseModel):
    default: str | None = Field(description="The appliance /simple/ and /appliances/latest stand for.")
    appliances: list[ApplianceInfo]
    failed: list[FailedAppliance] = Field(description="Files found that did not verify: never served.")


class InventoryRelease(Strict):
    release: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    version: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    metadata_versions: dict[Annotated[str, StringConstraints(max_length=32)], int] = Field(max_length=8)


class Inventory(Strict):
    """What ``chiron inventory`` prints: what a host holds (``chiron.inventory/1``)."""

    schema_: Literal["chiron.inventory/1"] = Field(alias="schema")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    releases: list[InventoryRelease] = Field(max_length=64)
    content: list[Sha256] = Field(max_length=250_000)


class DeltaInfo(BaseModel):
    name: str | None
    version: str | None
    metadata_version: int
    url: str = Field(description="Where to download the delta (GET, resumable).")
    size: int
    sha256: str
    full_size: int = Field(description="Size of the appliance the delta rebuilds.")
    carried: int = Field(description="Bytes of the appliance the delta carries.")
    reused: int = Field(description="Bytes the host already holds.")
    current: bool = Field(description="The host already runs this release (the delta then carries metadata only).")


# ---------------------------------------------------------------- receipts and hosts


class Operation(Strict):
    time: Stamp | None = None
    op: Short
    result: Short
    release: Short | None = None
    detail: Text | None = None


class ReceiptAppliance(Strict):
    name: Short | None
    version: Short | None
    release: Short
    environment: Short | None
    installed: Short | None


class AuditHead(Strict):
    seq: int
    sha256: Sha256


class Receipt(Strict):
    """A host's signed receipt, as ``chiron receipt`` makes it (``chiron.receipt/1``)."""

    schema_: Literal["chiron.receipt/1"] = Field(alias="schema")
    host: HostId
    key: Annotated[str, StringConstraints(pattern=r"^ed25519:[A-Za-z0-9+/]{43}=$")]
    key_sha256: Sha256
    seq: int = Field(ge=1)
    time: Stamp
    prefix: Annotated[str, StringConstraints(max_length=4096)]
    appliance: ReceiptAppliance | None
    previous: Short | None
    metadata_versions: dict[Annotated[str, StringConstraints(max_length=32)], int] = Field(max_length=8)
    last_operation: Operation | None
    pending_transaction: bool
    audit_head: AuditHead | None
    warnings: list[Text] = Field(max_length=20)
    chiron_version: Short
    signature: Annotated[str, StringConstraints(max_length=200)]

    def document(self) -> dict[str, Any]:
        """The receipt as signed (the JSON the host made)."""
        return self.model_dump(by_alias=True, mode="json")


class ReceiptAccepted(BaseModel):
    host: str
    seq: int
    behind: bool | None = Field(description="Whether the host runs an older release than the newest served.")
    newest: dict[str, Any] | None


class Enrolment(BaseModel):
    host: str
    state: Literal["pending", "approved", "revoked"]
    key_sha256: str | None


class Approval(Strict):
    key_sha256: Sha256 | None = Field(
        default=None, description="The fingerprint the admin checked; required when the host has not enrolled yet."
    )


class HostView(BaseModel):
    host: str
    state: Literal["pending", "approved", "revoked"]
    key_sha256: str | None
    last_seen: str | None
    seq: int
    appliance: dict[str, Any] | None
    targets_version: int | None
    behind: bool | None
    newest: dict[str, Any] | None
    last_operation: dict[str, Any] | None
    failed: bool
    silent: bool
    warnings: list[str]


class Fleet(BaseModel):
    newest: dict[str, dict[str, Any]]
    summary: dict[str, int]
    hosts: list[HostView]


class HostDetail(BaseModel):
    host: HostView
    receipts: list[dict[str, Any]]


# ---------------------------------------------------------------- jobs and yanks


class RefreshRequest(Strict):
    force: bool = Field(default=False, description="Sign a new version even if nothing changed upstream.")


class JobLine(BaseModel):
    time: str
    line: str


class Job(BaseModel):
    id: str
    kind: Literal["refresh"]
    store: str
    state: Literal["queued", "running", "succeeded", "failed"]
    created: str
    started: str | None
    finished: str | None
    requested_by: str
    options: dict[str, Any]
    pid: int | None
    error: str | None
    result: dict[str, Any] | None = Field(description="The chiron.mirror-refresh/1 report of a finished refresh.")
    log: list[JobLine] = []


class JobList(BaseModel):
    jobs: list[Job]


class Yank(Strict):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=r"^[^/\\]+$")]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        default="yanked by the site", description="Why; null un-yanks the file."
    )


class Health(BaseModel):
    status: Literal["ok", "not ready"]
    appliances: int
    failed: int
    detail: list[str] = []
