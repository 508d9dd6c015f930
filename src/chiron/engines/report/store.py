"""What a mirror store says about an appliance it signed: every version it recorded (sizes over time)
and the policy verdict it recorded with this one (``locks/N.policy.json``, written by a refresh).

The store is read, never written or locked: its state through ``core.storestate`` (a damaged one is the
documented refusal), the verdict as a bounded JSON file checked field by field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chiron.core.fs import read_small
from chiron.core.storestate import read_state
from chiron.engines.report.model import Advisory, PolicyVerdict, StoreView, Version
from chiron.errors import FormatError, UsageError

VERDICT = "chiron-policy-verdict/1"
MAX_VERDICT = 16 << 20


def verdict_path(store: Path, metadata_version: int) -> Path:
    """Where a refresh records the policy verdict of version N (beside its lock)."""
    return store / "locks" / f"{metadata_version}.policy.json"


def store_view(store: Path, sha256: str) -> StoreView:
    """The store's versions, marking the one whose file has ``sha256``, and that one's policy verdict."""
    state = read_state(store / "state.json")
    if state is None:
        raise UsageError(f"{store}: not a mirror store (no state.json)", hint="give --store the store's directory")
    versions = tuple(
        Version(
            metadata_version=v.metadata_version,
            version=v.version,
            created=v.created or "",
            size=v.size,
            file=Path(v.file).name,
            pruned=v.pruned,
            this=v.sha256 == sha256,
        )
        for v in state.versions
    )
    this = next((v for v in versions if v.this), None)
    if this is None:
        return StoreView(state.name, versions, None, "this appliance is not one of the versions the store recorded")
    path = verdict_path(store, this.metadata_version)
    if not path.is_file():
        note = (
            f"the store recorded no policy verdict for version {this.metadata_version} (made before chiron kept them)"
        )
        return StoreView(state.name, versions, None, note)
    return StoreView(state.name, versions, read_verdict(path, sha256), "")


def read_verdict(path: Path, sha256: str) -> PolicyVerdict:
    """A recorded verdict, checked; FormatError naming the file and the field when it is not one."""
    try:
        doc = json.loads(read_small(path, MAX_VERDICT))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: not a policy verdict: {exc}") from None
    where = str(path)
    if not isinstance(doc, dict) or doc.get("format") != VERDICT:
        raise FormatError(f"{where}: not a {VERDICT} document")
    if doc.get("appliance_sha256") != sha256:
        raise FormatError(f"{where}: records the verdict of another appliance file (appliance_sha256 differs)")
    rules = _get(doc, "rules", dict, where)
    advisories = [_advisory(a, f"{where}: accepted[{i}]") for i, a in enumerate(_get(doc, "accepted", list, where))]
    return PolicyVerdict(
        verdict=_get(doc, "verdict", str, where),
        policy=str(doc.get("policy") or "(defaults: no policy file)"),
        policy_sha256=str(doc.get("policy_sha256") or ""),
        rules=tuple(sorted((str(k), _setting(v)) for k, v in rules.items())),
        advisories=tuple(sorted(advisories, key=lambda a: (a.package, a.id))),
        osv_records=_get(doc, "osv_records", int, where),
    )


def _get(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{where}: {key} is missing or not a {kind.__name__}")
    return value


def _advisory(value: Any, where: str) -> Advisory:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: is not an object")
    aliases = _get(value, "aliases", list, where)
    return Advisory(
        id=_get(value, "id", str, where),
        aliases=tuple(str(a) for a in aliases),
        package=_get(value, "package", str, where),
        version=_get(value, "version", str, where),
        summary=str(value.get("summary") or ""),
    )


def _setting(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return json.dumps(value) if isinstance(value, bool) else str(value)
