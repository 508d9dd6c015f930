"""Strict pydantic models of everything chiron reads from disk.

The spec (bundle/appliance.toml) is parsed by ``_spec.load_spec``; these models only describe its
shape and its field-level rules. Models are frozen and forbid unknown fields, so a typo in a spec is
an error that names the field rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^(\d+)([dhw])$")
ROLES = ("root", "targets", "snapshot", "timestamp")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90d``, ``12h`` or ``2w``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a duration like 7d, 12h or 2w")
    n, unit = int(match.group(1)), match.group(2)
    if n <= 0:
        raise ValueError(f"'{text}' must be positive")
    return n * {"h": 3600, "d": 86400, "w": 7 * 86400}[unit]


class ApplianceInfo(_Strict):
    """``[appliance]``: what is being shipped."""

    name: str
    version: str
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        from packaging.version import InvalidVersion, Version

        try:
            Version(v)
        except InvalidVersion:
            raise ValueError(f"'{v}' is not a PEP 440 version") from None
        return v


class TargetEnvironment(_Strict):
    """One ``[[environments]]`` entry: an interpreter and platform the wheelhouse must serve."""

    name: str
    python_version: str
    implementation: Literal["cp", "pp"] = "cp"
    platforms: list[str] = Field(min_length=1)
    abis: list[str] = Field(default_factory=list)

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("python_version")
    @classmethod
    def _pyver(cls, v: str) -> str:
        if not re.fullmatch(r"3\.\d{1,2}", v):
            raise ValueError(f"'{v}' is not a Python version like 3.11")
        if int(v.split(".")[1]) < 8:
            raise ValueError(f"'{v}' is older than any Python chiron can serve (3.8+)")
        return v

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not re.fullmatch(r"[a-z0-9_.]+", tag):
                raise ValueError(f"'{tag}' is not a platform tag like manylinux_2_28_x86_64")
        return v

    @property
    def nodot(self) -> str:
        return self.python_version.replace(".", "")

    def abi_list(self) -> list[str]:
        """The ABIs to accept; defaults to the interpreter's own, abi3 and none."""
        if self.abis:
            return list(self.abis)
        return [f"{self.implementation}{self.nodot}", "abi3", "none"]


class PythonSection(_Strict):
    """``[python]``: what to resolve and from where."""

    requirements: list[str] = Field(default_factory=list)
    lock: str | None = None
    index_url: str | None = "https://pypi.org/simple"
    find_links: list[str] = Field(default_factory=list)
    allow_sdists: bool = False

    @model_validator(mode="after")
    def _something(self) -> PythonSection:
        if not self.requirements and self.lock is None:
            raise ValueError("give 'requirements' or 'lock' (a pylock.toml)")
        if not self.index_url and not self.find_links and not self.lock:
            raise ValueError("give 'index_url' or 'find_links' to resolve from")
        return self


class KeyRef(_Strict):
    """A private key named by a securesystemslib URI; ``keyid`` ties it to a key in root metadata."""

    uri: str
    keyid: str | None = None
    secret_env: str | None = None  # environment variable holding the passphrase (file2:) or PIN (hsm:)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        scheme, sep, rest = v.partition(":")
        if not sep or not rest or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
            raise ValueError(f"'{v}' is not a private-key URI like file2:keys/targets.pem or hsm:2")
        return v


def _key_list(value: object) -> object:
    if isinstance(value, list):
        return [{"uri": item} if isinstance(item, str) else item for item in value]
    return value


class RoleSpec(_Strict):
    """``[trust.roles.<role>]``: who signs a role, how many must, and for how long it is valid."""

    keys: Annotated[list[KeyRef], Field(min_length=1)]
    threshold: int = Field(default=1, ge=1)
    expires: str

    @field_validator("keys", mode="before")
    @classmethod
    def _keys(cls, v: object) -> object:
        return _key_list(v)

    @field_validator("expires")
    @classmethod
    def _expires(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _enough(self) -> RoleSpec:
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} is more than the {len(self.keys)} key(s) listed")
        return self

    @property
    def expires_seconds(self) -> int:
        return parse_duration(self.expires)


class DetachedSpec(_Strict):
    """``[trust.detached]``: the key that signs the whole file for ssh-keygen -Y verify."""

    key: KeyRef | None = None
    namespace: str = "chiron-appliance"
    identity: str = "chiron"

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, v: object) -> object:
        return {"uri": v} if isinstance(v, str) else v


class TrustSection(_Strict):
    """``[trust]``: the root metadata (file or directory of N.root.json) and the online roles."""

    root: str
    roles: dict[str, RoleSpec]
    detached: DetachedSpec = DetachedSpec()
    # How long an appliance may take to reach the hosts (media, approvals, a data diode): build and
    # refresh warn when a role's validity is shorter, and a refresh renews metadata before less than
    # this is left.
    carry_interval: str | None = None

    @field_validator("carry_interval")
    @classmethod
    def _carry(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: dict[str, RoleSpec]) -> dict[str, RoleSpec]:
        unknown = sorted(set(v) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
        missing = [r for r in ROLES[1:] if r not in v]
        if missing:
            raise ValueError(f"missing role(s) {', '.join(missing)}")
        return v


class ImageRef(_Strict):
    """``[[images]]``: a container image, fetched at build time and pinned by digest."""

    ref: str
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"])
    source: Literal["registry", "docker", "oci"] = "registry"
    path: str | None = None  # for source = "oci": an OCI layout directory or oci-archive file
    insecure: bool = False  # plain http (loopback registries are always allowed plain http)
    credentials_env: str | None = None  # variable holding USER:PASSWORD (or a token) for the registry

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+", p):
                raise ValueError(f"'{p}' is not a platform like linux/amd64")
        return v


class ExtraFile(_Strict):
    """``[[files]]``: an arbitrary file shipped as a signed payload member under ``files/``."""

    src: str
    dest: str

    @field_validator("dest")
    @classmethod
    def _dest(cls, v: str) -> str:
        from chiron.core.text import check_member_name

        check_member_name(f"files/{v}")
        return v


class Hook(_Strict):
    """An activation hook: an argv run without a shell, stopped after ``timeout`` seconds.

    In the spec a hook is an argv list (``post_switch = ["systemctl", "restart", "app"]``, timeout 60 s)
    or a table with both (``post_switch = { argv = [...], timeout = 120 }``).
    """

    argv: list[str] = Field(min_length=1)
    timeout: int = Field(default=60, ge=1, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v: object) -> object:
        return {"argv": v} if isinstance(v, list) else v

    @field_validator("argv")
    @classmethod
    def _program(cls, v: list[str]) -> list[str]:
        if not v[0]:
            raise ValueError("the program (the first element) is empty")
        return v


class LiveCheck(_Strict):
    """``[host.live_check]``: after the switch, what proves the release serves: an HTTP answer (``url``,
    ``status``, optional ``body`` text it must contain) or a ``command`` that exits 0; retried every
    ``interval`` seconds (each attempt bounded by ``timeout``) until ``deadline`` seconds have passed."""

    url: str | None = None
    status: int = Field(default=200, ge=100, le=599)
    body: str | None = None
    command: list[str] | None = None
    deadline: int = Field(default=60, ge=1, le=86400)
    interval: float = Field(default=2.0, gt=0, le=3600)
    timeout: float = Field(default=5.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one(self) -> LiveCheck:
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of 'url' (an HTTP check) or 'command' (an argv)")
        if self.url is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.url):
            raise ValueError(f"url: '{self.url[:80]}' is not an http:// or https:// URL")
        if self.command is not None and (not self.command or not self.command[0]):
            raise ValueError("command: give the program and its arguments")
        if self.command is not None and self.body is not None:
            raise ValueError("body applies to an HTTP check (url), not to a command")
        return self


class HostSection(_Strict):
    """``[host]``: how an air-gapped host installs this appliance, and how a release is brought into
    service (activation: hooks, a Compose project, a live check; docs/host.md)."""

    health_check: list[str] = Field(default_factory=list)
    health_check_timeout: int = Field(default=300, ge=1)
    images_required: bool = False  # if true, an install fails when the images cannot be loaded
    keep_releases: int = Field(default=2, ge=2)
    pre_switch: Hook | None = None  # before the switch; a failure aborts the upgrade
    post_switch: Hook | None = None  # after the switch, on trial; a failure reverts
    on_revert: Hook | None = None  # after a revert to the previous release
    compose: str | None = None  # the dest of a [[files]] entry: the Compose file of the application
    compose_timeout: int = Field(default=300, ge=1, le=86400)  # for each run of the Compose CLI
    live_check: LiveCheck | None = None

    @property
    def activates(self) -> bool:
        """Whether a new release of this appliance is on trial after the switch."""
        return any(x is not None for x in (self.post_switch, self.compose, self.live_check))


class ApplianceSpec(_Strict):
    """The whole ``appliance.toml``."""

    appliance: ApplianceInfo
    python: PythonSection
    environments: list[TargetEnvironment] = Field(min_length=1)
    trust: TrustSection
    images: list[ImageRef] = Field(default_factory=list)
    files: list[ExtraFile] = Field(default_factory=list)
    host: HostSection = HostSection()

    @field_validator("files")
    @classmethod
    def _unique_files(cls, v: list[ExtraFile]) -> list[ExtraFile]:
        _no_duplicates([f.dest for f in v], "dest")
        return v

    @model_validator(mode="after")
    def _compose_is_shipped(self) -> ApplianceSpec:
        dests = [f.dest for f in self.files]
        if self.host.compose is not None and self.host.compose not in dests:
            raise ValueError(
                f"host.compose: '{self.host.compose}' is not the dest of a [[files]] entry "
                '(ship the Compose file with [[files]] src = "...", dest = "' + self.host.compose + '")'
            )
        return self

    @field_validator("environments")
    @classmethod
    def _unique_envs(cls, v: list[TargetEnvironment]) -> list[TargetEnvironment]:
        _no_duplicates([e.name for e in v], "environment name(s)")
        return v


def _no_duplicates(values: list[str], what: str) -> None:
    dupes = sorted({x for x in values if values.count(x) > 1})
    if dupes:
        raise ValueError(f"{what} used twice: {', '.join(dupes)}")
