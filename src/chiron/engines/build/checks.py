"""What a build refuses before it writes anything: metadata already expired at the build time, a
version that would fork a mirror store's sequence, and keys the root does not list (with the hint
that fits after a key rotation)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import Root

from chiron.archive.layout import root_version
from chiron.core import compose as _compose
from chiron.core.clock import iso
from chiron.core.fs import read_small
from chiron.core.models import ApplianceSpec, parse_duration
from chiron.core.spec import LoadedSpec
from chiron.core.storestate import claim_path, find_claim
from chiron.errors import Refused, SigningKeyError, SpecError, UsageError
from chiron.trust import keys as _keys
from chiron.trust import metadata as _trust


def check_validity(
    spec: ApplianceSpec, root: Root, built_at: datetime, now: datetime, *, allow_expired: bool = False
) -> list[str]:
    """Refuse metadata that would already be expired now (a build time far in the past); return
    warnings where a role's validity is shorter than the spec's carry interval."""
    expiries = {r: built_at + timedelta(seconds=spec.trust.roles[r].expires_seconds) for r in _trust.ONLINE_ROLES}
    expired = sorted((when, role) for role, when in expiries.items() if when <= now and not allow_expired)
    if expired:
        when, role = expired[0]  # the first to expire: the one a host would refuse first
        others = [r for _w, r in expired[1:]]
        also = f" ({' and '.join(others)} too)" if others else ""
        raise UsageError(
            f"role {role}: metadata built at {iso(built_at)} with expires = {spec.trust.roles[role].expires} "
            f"would expire at {iso(when)}, before now ({iso(now)}){also}: every host would refuse it",
            hint=f"build with a recent SOURCE_DATE_EPOCH (or none), or a longer trust.roles.{role}.expires",
        )
    if root.expires <= now and not allow_expired:
        raise UsageError(
            f"role root: root version {root.version} expired at {iso(root.expires)} (now {iso(now)})",
            hint="sign a new root version with a later expiry (chiron keys rotate root --expires ...)",
        )
    carry = spec.trust.carry_interval
    if carry is None:
        return []
    seconds = parse_duration(carry)
    warnings = [
        f"trust.roles.{role}.expires ({spec.trust.roles[role].expires}) is shorter than trust.carry_interval "
        f"({carry}): an appliance signed now expires before it can reach the hosts"
        for role in _trust.ONLINE_ROLES
        if spec.trust.roles[role].expires_seconds < seconds
    ]
    if root.expires < now + timedelta(seconds=seconds):
        warnings.append(
            f"root version {root.version} expires at {iso(root.expires)}, within trust.carry_interval ({carry}): "
            "sign a new root version before it does"
        )
    return warnings


def root_dir_of(loaded: LoadedSpec) -> Path | None:
    """The spec's root chain directory (trust.root naming a directory), where a store records itself."""
    path = loaded.resolve_path(loaded.spec.trust.root, "trust.root")
    return path if path.is_dir() else None


def check_no_fork(loaded: LoadedSpec, chain: list[bytes], version: int) -> None:
    """Refuse to sign ``version`` when a mirror store signs this appliance under the same root chain
    directory: the store's next refresh would sign below it, and hosts would refuse it as a rollback."""
    root_dir = root_dir_of(loaded)
    if root_dir is None:
        return
    found = find_claim(root_dir, loaded.spec.appliance.name, _trust.fingerprint(chain[0]))
    if found is None:
        return
    store, state = found
    n = state.latest.metadata_version
    raise Refused(
        f"{claim_path(root_dir, loaded.spec.appliance.name)}: mirror store {store} signs "
        f"{loaded.spec.appliance.name} under this root (metadata version {n}); this build would sign version "
        f"{version} and fork its sequence: hosts that install it would refuse every later refresh as a rollback",
        hint=f"ship it from the store: chiron mirror refresh --store {store} --force "
        f"(it signs version {n + 1} or later, a key rotation included)",
    )


def _signer_hint(loaded: LoadedSpec, chain: list[bytes], exc: SigningKeyError) -> SigningKeyError:
    """A key that the root does not list, with what this spec shows: the directory trust.root should
    name (a newer root lies beside the file it names), or, when it already names the directory of a
    rotated chain, that the key was revoked."""
    if "of the root metadata" not in exc.message:
        return exc
    given = loaded.resolve_path(loaded.spec.trust.root, "trust.root")
    newest = _trust.parse_root(chain[-1], "root").signed.version
    versions = [root_version(p.name) or 0 for p in given.parent.glob("*.root.json")] if given.is_file() else []
    later = sorted(v for v in versions if v > newest)
    if later:
        hint = f"{exc.hint}: here {given.parent}, which holds root version {later[-1]}"
    elif len(chain) > 1 and given.is_dir():
        hint = (
            f"the newest root (version {newest}) does not list this key: after a rotation, each "
            "trust.roles key must be one root version "
            f"{newest} lists (replace a revoked key's URI with its successor's)"
        )
    else:
        return exc
    return SigningKeyError(exc.message, hint=hint)


def load_signers(loaded: LoadedSpec, chain: list[bytes]) -> tuple[dict[str, list[Any]], Any]:
    """The online roles' signers and the detached-signature signer, each checked against the root."""
    spec = loaded.spec
    root = _trust.parse_root(chain[-1], "root").signed
    try:
        signers = {
            role: [
                _keys.load_signer(
                    loaded.resolve_key_uri(k, f"trust.roles.{role}.keys[{i}]"), role, root, k.keyid, k.secret_env
                )
                for i, k in enumerate(spec.trust.roles[role].keys)
            ]
            for role in _trust.ONLINE_ROLES
        }
        ref = spec.trust.detached.key
        detached = (
            signers["targets"][0]
            if ref is None
            else _keys.load_signer(
                loaded.resolve_key_uri(ref, "trust.detached.key"), "targets", root, ref.keyid, ref.secret_env
            )
        )
    except SigningKeyError as exc:
        raise _signer_hint(loaded, chain, exc) from None
    for role in _trust.ONLINE_ROLES:
        want = spec.trust.roles[role].threshold
        if want != root.roles[role].threshold:
            raise SpecError(
                f"{loaded.path}: trust.roles.{role}.threshold: is {want} but the root metadata says "
                f"{root.roles[role].threshold}"
            )
    return signers, detached


def check_compose(loaded: LoadedSpec, files_dir: Path | None) -> None:
    """``[host].compose`` names a [[files]] entry (a signed member): refuse before anything is fetched
    a Compose file that is not one, or whose services run an image the appliance does not carry."""
    dest = loaded.spec.host.compose
    if dest is None:
        return
    i, extra = next((i, f) for i, f in enumerate(loaded.spec.files) if f.dest == dest)
    src = files_dir / dest if files_dir else loaded.resolve_path(extra.src, f"files[{i}].src")
    if not src.is_file():
        raise SpecError(f"{loaded.path}: files[{i}].src: {src} is not a file (it is the host.compose file)")
    where = f"{loaded.path}: host.compose ({src})"
    raw = read_small(src, 4 << 20, "host.compose file")
    _compose.check_carried(_compose.parse(raw, where), [i.ref for i in loaded.spec.images], where)
