"""What a mirror refresh may let through: package allow/deny lists, licences, sdists, yanked releases and
known vulnerabilities from an OSV-format database kept on the mirror host.

The policy is a TOML file next to the spec (``policy.toml``; see docs/mirror.md). Every rule is checked
against the resolved lock and the wheels' own metadata; all violations are collected so one run names
every problem, and the refresh stops (exit 4) before any appliance is written.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chiron.core.fs import read_small
from chiron.errors import SpecError, UsageError
from chiron.sources import lock as _lock
from chiron.sources import wheelmeta as _wheelmeta


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class PackageRules(_Strict):
    """``[packages]``: ``allow`` (name globs; empty = any) and ``deny`` (requirement specifiers)."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)

    @field_validator("deny")
    @classmethod
    def _deny(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                why = str(exc).splitlines()[0]
                raise ValueError(f"'{text}' is not a requirement specifier such as 'name' or 'name<2': {why}") from None
        return v


class LicenceRules(_Strict):
    """``[licenses]``: ``allow`` (licence strings or SPDX ids as wheels declare them); empty = any."""

    allow: list[str] = Field(default_factory=list)
    allow_unknown: bool = False


class SourceRules(_Strict):
    """``[sources]``: whether sdists and yanked releases may enter."""

    sdists: bool = False
    yanked: bool = False


class VulnerabilityRules(_Strict):
    """``[vulnerabilities]``: an OSV database directory (relative to the policy file) and accepted ids."""

    osv_db: str | None = None
    ignore: list[str] = Field(default_factory=list)


class Policy(_Strict):
    packages: PackageRules = PackageRules()
    licenses: LicenceRules = LicenceRules()
    sources: SourceRules = SourceRules()
    vulnerabilities: VulnerabilityRules = VulnerabilityRules()


@dataclass(frozen=True)
class Violation:
    package: str
    version: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.package} {self.version}: {self.rule}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"package": self.package, "version": self.version, "rule": self.rule, "detail": self.detail}


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    path: Path | None
    osv: dict[str, list[dict[str, Any]]]  # canonical package name -> OSV records affecting it


def load(path: Path | None) -> LoadedPolicy:
    """Read and validate a policy file (None: the default policy, which only refuses sdists and yanked)."""
    if path is None:
        return LoadedPolicy(Policy(), None, {})
    if not path.exists() and not path.is_symlink():
        raise SpecError(f"{path}: policy file not found")
    try:
        data = tomllib.loads(read_small(path, 4 << 20, "policy file").decode("utf-8"))
    except UsageError as exc:
        raise SpecError(exc.message) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the policy: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: cannot read the policy: nested too deeply") from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (see docs/mirror.md)"
        raise SpecError(f"{path}: {loc}: {msg}") from None
    osv: dict[str, list[dict[str, Any]]] = {}
    if policy.vulnerabilities.osv_db:
        db = Path(policy.vulnerabilities.osv_db)
        osv = load_osv(db if db.is_absolute() else path.parent / db)
    return LoadedPolicy(policy, path, osv)


def load_osv(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Every PyPI record of an OSV database directory (one JSON file per advisory, any depth)."""
    if not directory.is_dir():
        raise SpecError(
            f"{directory}: the OSV database directory does not exist",
            hint="download one (e.g. osv.dev's PyPI all.zip, unzipped) or remove vulnerabilities.osv_db",
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(directory.rglob("*.json")):
        try:
            record = json.loads(read_small(f, 16 << 20, "OSV record").decode("utf-8"))
        except UsageError as exc:
            raise SpecError(exc.message) from None
        except RecursionError:
            raise SpecError(f"{f}: not an OSV JSON record: nested too deeply") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"{f}: not an OSV JSON record: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise SpecError(f"{f}: not an OSV record (no 'id')")
        for affected in record.get("affected", []):
            pkg = affected.get("package", {})
            if pkg.get("ecosystem") == "PyPI" and isinstance(pkg.get("name"), str):
                out.setdefault(canonicalize_name(pkg["name"]), []).append(record)
    return out


def _affects(record: dict[str, Any], name: str, version: str) -> bool:
    """Whether an OSV record lists this version, explicitly or inside an ECOSYSTEM range."""
    if record.get("withdrawn"):
        return False  # the advisory was retracted
    try:
        v = Version(version)
    except InvalidVersion:
        return version in {str(x) for a in record.get("affected", []) for x in a.get("versions", [])}
    for affected in record.get("affected", []):
        pkg = affected.get("package", {})
        if pkg.get("ecosystem") != "PyPI" or canonicalize_name(str(pkg.get("name", ""))) != name:
            continue
        if any(_same_version(v, listed) for listed in affected.get("versions", [])):
            return True
        for rng in affected.get("ranges", []):
            if rng.get("type") == "ECOSYSTEM" and _in_range(v, rng.get("events", [])):
                return True
    return False


def _same_version(v: Version, listed: object) -> bool:
    try:
        return Version(str(listed)) == v  # "1.0" and "1.0.0" are one PEP 440 version
    except InvalidVersion:
        return str(listed) == str(v)


def _in_range(v: Version, events: list[dict[str, str]]) -> bool:
    """OSV range semantics: in version order, ``introduced`` opens; ``fixed``/``limit`` close at, and
    ``last_affected`` after, their version."""
    parsed = []
    for event in events:
        for kind, value in event.items():
            try:
                parsed.append((kind, Version(value)))
            except InvalidVersion:
                # One event this tool cannot order: read the range as affected from there on (fail closed)
                # rather than let a malformed advisory hide a vulnerability.
                if kind == "introduced":
                    parsed.append((kind, Version("0")))
    parsed.sort(key=lambda e: e[1])
    inside = False
    for kind, bound in parsed:
        if kind == "introduced" and v >= bound:
            inside = True
        elif (kind in ("fixed", "limit") and v >= bound) or (kind == "last_affected" and v > bound):
            inside = False
    return inside


def check(loaded: LoadedPolicy, lock: _lock.Lock, files: dict[str, Path]) -> list[Violation]:
    """Every violation of the policy by the lock; ``files`` maps artifact filename to a local copy."""
    policy = loaded.policy
    out: list[Violation] = []
    deny = [Requirement(d) for d in policy.packages.deny]
    allow_lic = set(policy.licenses.allow)
    for pkg in lock.packages:
        name, version = pkg.name, pkg.version
        if policy.packages.allow and not any(
            fnmatch.fnmatchcase(name, canonicalize_name(p)) for p in policy.packages.allow
        ):
            out.append(Violation(name, version, "packages.allow", "not in the allow list"))
        for req in deny:
            if canonicalize_name(req.name) == name and (
                not req.specifier or req.specifier.contains(version, prereleases=True)
            ):
                out.append(Violation(name, version, "packages.deny", f"matches '{req}'"))
        if pkg.yanked and not policy.sources.yanked:
            out.append(Violation(name, version, "sources.yanked", "this release is yanked on the index"))
        for fname in sorted(pkg.artifacts):
            if not fname.endswith(".whl") and not policy.sources.sdists:
                out.append(Violation(name, version, "sources.sdists", f"{fname} is an sdist"))
        if allow_lic:
            wheel = next((files[f] for f in sorted(pkg.artifacts) if f.endswith(".whl") and f in files), None)
            licence = _wheelmeta.licence(_wheelmeta.read_metadata_file(wheel)) if wheel else ""
            if not licence:
                if not policy.licenses.allow_unknown:
                    out.append(Violation(name, version, "licenses.allow", "declares no licence"))
            elif licence not in allow_lic:
                out.append(Violation(name, version, "licenses.allow", f"licence '{licence}' is not allowed"))
        for record in loaded.osv.get(name, []):
            ids = {record["id"], *record.get("aliases", [])}
            if ids & set(policy.vulnerabilities.ignore):
                continue
            if _affects(record, name, version):
                summary = str(record.get("summary", "")).strip()
                out.append(
                    Violation(name, version, "vulnerabilities", f"{record['id']}{': ' + summary if summary else ''}")
                )
    return out


# ---------------------------------------------------------------- the verdict a refresh records

VERDICT_FORMAT = "chiron-policy-verdict/1"


def accepted_advisories(loaded: LoadedPolicy, lock: _lock.Lock) -> list[dict[str, Any]]:
    """Known vulnerabilities of locked versions that the policy let through: advisories that affect a
    package as locked and whose id (or an alias) is in ``vulnerabilities.ignore``."""
    ignore = set(loaded.policy.vulnerabilities.ignore)
    out = []
    for pkg in lock.packages:
        for record in loaded.osv.get(pkg.name, []):
            aliases = sorted(str(a) for a in record.get("aliases", []))
            if {record["id"], *aliases} & ignore and _affects(record, pkg.name, pkg.version):
                out.append(
                    {
                        "id": record["id"],
                        "aliases": aliases,
                        "package": pkg.name,
                        "version": pkg.version,
                        "summary": str(record.get("summary", "")).strip(),
                    }
                )
    return sorted(out, key=lambda a: (a["package"], a["id"]))


def verdict(loaded: LoadedPolicy, accepted: list[dict[str, Any]], appliance_sha256: str) -> dict[str, Any]:
    """What a refresh records beside the lock of the version it signed (``locks/N.policy.json``): the
    policy it passed, its rules, and the advisories it let through (``accepted_advisories``; shown by
    ``chiron report``)."""
    p = loaded.policy
    return {
        "format": VERDICT_FORMAT,
        "appliance_sha256": appliance_sha256,
        "verdict": "passed",
        "policy": str(loaded.path) if loaded.path else None,
        "policy_sha256": _sha256_of(loaded.path),
        "rules": {
            "packages.allow": list(p.packages.allow),
            "packages.deny": list(p.packages.deny),
            "licenses.allow": list(p.licenses.allow),
            "licenses.allow_unknown": p.licenses.allow_unknown,
            "sources.sdists": p.sources.sdists,
            "sources.yanked": p.sources.yanked,
            "vulnerabilities.osv_db": p.vulnerabilities.osv_db or "",
            "vulnerabilities.ignore": list(p.vulnerabilities.ignore),
        },
        "osv_records": len({r["id"] for records in loaded.osv.values() for r in records}),
        "accepted": accepted,
    }


def _sha256_of(path: Path | None) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None
