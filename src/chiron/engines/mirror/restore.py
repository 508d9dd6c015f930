"""Restore (disaster recovery) and init (a mirror host set up from an appliance): a store rebuilt
from a verified appliance, so that the next refresh signs version N+1.

Everything the next refresh needs is checked before anything is written: the spec's keys
(``file2:`` files must exist), its lock, OCI image paths and [[files]]. Without ``--spec`` the
appliance's own spec, lock and [[files]] are written into ``STORE/spec/``; when the root chain the
spec names cannot be found there, the store signs with the chain the appliance carries
(``STORE/tuf/root``, recorded as the store's ``root``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive.layout import TOOL_TARGET, appliance_suffix
from chiron.core.fs import copy_region, sha256_file, write_atomic
from chiron.core.spec import LoadedSpec, load_spec_bytes
from chiron.core.storestate import StoreState, VersionRecord
from chiron.engines.verify import VerifiedAppliance, verified
from chiron.errors import Refused, UsageError, VerificationError
from chiron.sources import images as _images
from chiron.sources.cache import ArtifactCache
from chiron.trust import metadata as _trust

from .commit import claim, key_uris
from .model import content_key, load
from .store import MAX_METADATA, Store, is_root_member, root_info, save_tuf


@dataclass
class Plan:
    """Where the restored store's spec, base and root chain come from, checked before writing."""

    spec_path: Path
    base: Path | None
    loaded: LoadedSpec
    extracted: Path | None  # STORE/spec when the appliance's own spec is used
    root: Path | None  # STORE/tuf/root when the spec's trust.root is not there
    lock_copy: Path | None  # where the carried lock goes so that python.lock resolves
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Carried:
    """What the appliance carries for the store: its spec and lock bytes, and its root chain."""

    spec_raw: bytes
    pylock: bytes
    chain: list[bytes]
    spec_version: str  # the carried spec's [appliance] version: the store's file names use it


def restore(
    archive: Path,
    store_dir: Path,
    *,
    spec: Path | None = None,
    base: Path | None = None,
    root_file: Path | None = None,
    root_sha256: str | None = None,
    op: str = "mirror restore",
) -> dict[str, Any]:
    """Reconstitute a mirror store from a verified appliance, so the next refresh signs version N+1."""
    with verified(archive, root_file=root_file, root_sha256=root_sha256) as report:
        if not report.ok:
            raise VerificationError(report.problems, hint="restore only from an appliance that verifies")
        appliance = report.verified
        store = Store(store_dir.absolute())
        with store.locked(op):
            if store.state_file.exists():
                raise Refused(
                    f"{store.root} already holds a mirror store",
                    hint="restore into a new, empty directory (a store is never overwritten)",
                )
            carried = _carried(appliance, archive)
            plan = plan_restore(store, str(report.name), spec, base, carried.spec_raw, carried.chain)
            store.sweep(None)  # nothing is written before this line
            files = _unpack(appliance, store, plan)
            number = int(report.roles["targets"]["version"])
            dest = _write_files(store, archive, appliance, plan, carried, str(report.name), number)
            state = StoreState(
                format="chiron-mirror/1",
                name=str(report.name),
                spec=str(plan.spec_path),
                base=str(plan.base.absolute()) if plan.base else None,
                files_dir=str(plan.extracted / "files") if plan.extracted and files else None,
                root=str(plan.root) if plan.root else None,
                keys=key_uris(plan.loaded),
                versions=[_record(store, dest, report.manifest, appliance, carried, files, number, archive)],
            )
            store.write_state(state)
            note = claim(store, plan.loaded, carried.chain, number) if plan.root is None else None
    return {
        "schema": "chiron.mirror-restore/1",
        "store": str(store.root),
        "name": report.name,
        "version": report.version,
        "metadata_version": number,
        "next_version": number + 1,
        "wheels": sum(1 for m in appliance.layout.members if m.name.startswith("wheels/")),
        "image_blobs": sum(1 for m in appliance.layout.members if m.name.startswith(f"{_images.PREFIX}blobs/")),
        "spec": str(plan.spec_path),
        "root": state.root,
        "keys": state.keys,
        **root_info(carried.chain),
        "notices": [*report.notices, *plan.notes, *([note] if note else [])],
    }


def _carried(appliance: VerifiedAppliance, archive: Path) -> Carried:
    spec_raw, pylock = appliance.read("spec/appliance.toml"), appliance.read("lock/pylock.toml")
    roots = [m.name for m in appliance.layout.members if is_root_member(m.name)]
    chain = sorted(
        (appliance.reader.read(name, MAX_METADATA) for name in roots),
        key=lambda data: _trust.parse_root(data, "root").signed.version,
    )
    version = load_spec_bytes(spec_raw, f"{archive}: spec/appliance.toml").spec.appliance.version
    return Carried(spec_raw, pylock, chain, version)


def _write_files(
    store: Store, archive: Path, appliance: VerifiedAppliance, plan: Plan, carried: Carried, name: str, number: int
) -> Path:
    """The lock, the carried spec and lock (without --spec), the appliance and its signature, and
    the public TUF state. Returns the store's copy of the appliance."""
    stem = f"{name}-{carried.spec_version}-{number}"
    write_atomic(store.locks / f"{number}.pylock.toml", carried.pylock)
    if plan.extracted is not None:
        write_atomic(plan.extracted / "appliance.toml", carried.spec_raw)
    if plan.lock_copy is not None:
        write_atomic(plan.lock_copy, carried.pylock)
    dest = store.appliances / f"{stem}{appliance_suffix(appliance.layout.tool_format)}"
    copy_region(archive, 0, appliance.reader.size, dest)
    sig = archive.with_name(archive.name + ".sig")
    if sig.is_file():
        copy_region(sig, 0, sig.stat().st_size, dest.with_name(dest.name + ".sig"))
    save_tuf(store, dest, carried.chain)
    return dest


def _record(
    store: Store,
    dest: Path,
    manifest: dict[str, Any],
    appliance: VerifiedAppliance,
    carried: Carried,
    files: dict[str, str],
    number: int,
    archive: Path,
) -> VersionRecord:
    key = content_key(
        spec=carried.spec_raw,
        pylock=carried.pylock,
        images=list(manifest.get("images", [])),
        files=files,
        root=carried.chain[-1],
        tool_sha256=appliance.target(TOOL_TARGET).sha256,
    )
    return VersionRecord(
        metadata_version=number,
        version=str(manifest.get("version")),
        created=manifest.get("created"),
        file=str(dest.relative_to(store.root)),
        sha256=sha256_file(dest),
        size=dest.stat().st_size,
        content_key=key,
        lock=f"locks/{number}.pylock.toml",
        restored_from=str(archive.absolute()),
        root_version=_trust.parse_root(carried.chain[-1], "root").signed.version,
    )


def _unpack(appliance: VerifiedAppliance, store: Store, plan: Plan) -> dict[str, str]:
    """Wheels into the artifact store, image blobs into the OCI layout, [[files]] into STORE/spec
    (without --spec), each re-hashed against its signed target as it is copied. Returns the
    [[files]] by destination and sha256 (for the content key)."""
    cache = ArtifactCache(store.artifacts)
    files: dict[str, str] = {}
    for m in appliance.layout.members:
        if m.name.startswith("wheels/"):
            appliance.copy(m.name, cache.path_for(appliance.target(m.name).sha256))
        elif m.name.startswith(_images.PREFIX):
            appliance.copy(m.name, store.oci / m.name.removeprefix(_images.PREFIX))
        elif m.name.startswith("files/"):
            files[m.name.removeprefix("files/")] = appliance.target(m.name).sha256
            if plan.extracted is not None:
                appliance.copy(m.name, plan.extracted / "files" / m.name.removeprefix("files/"))
    return files


def plan_restore(
    store: Store, name: str, spec: Path | None, base: Path | None, spec_raw: bytes, chain: list[bytes]
) -> Plan:
    """Decide where the store's spec, base and root chain come from, and refuse now (exit 2) what
    would make the next refresh fail: a key file, lock, image layout or [[files]] source not there."""
    if spec is None:
        extracted = store.root / "spec"
        base = base or extracted
        spec_path = extracted / "appliance.toml"
        loaded = load_spec_bytes(spec_raw, f"{spec_path} (the appliance's spec)", base / "appliance.toml")
        plan = Plan(spec_path, base, loaded, extracted, None, None)
    else:
        loaded = load(spec.absolute(), base)
        plan = Plan(spec.absolute(), base, loaded, None, None, None)
    where = str(plan.spec_path)
    hint = (
        "give --base DIR, the folder the spec was built from (its relative paths resolve there), or --spec SPEC"
        if spec is None
        else "fix the spec, or give --base DIR where its relative paths resolve"
    )
    if loaded.spec.appliance.name != name:
        raise UsageError(f"{where} builds '{loaded.spec.appliance.name}', the appliance is '{name}'", hint=hint)
    root_path = loaded.resolve_path(loaded.spec.trust.root, "trust.root")
    if not root_path.exists():
        if spec is not None:
            raise UsageError(f"{where}: trust.root: {root_path}: no such file or directory", hint=hint)
        plan.root = store.tuf / "root"
        plan.notes.append(
            f"trust.root {root_path} is not on this host: the store signs with the root chain the appliance "
            f"carries ({plan.root}); after a key rotation, refresh with the new spec (SPEC argument)"
        )
    elif _trust.load_root_chain(root_path)[0] != chain[0]:
        raise Refused(f"{where}: trust.root {root_path} is a different root of trust than the appliance's")
    _check_paths(loaded, plan, where, hint)
    return plan


def _check_paths(loaded: LoadedSpec, plan: Plan, where: str, hint: str) -> None:
    """Key files, the lock, OCI layouts and [[files]] sources the next refresh will read."""
    spec = loaded.spec
    refs = [
        (f"trust.roles.{r}.keys[{i}]", k) for r in _trust.ONLINE_ROLES for i, k in enumerate(spec.trust.roles[r].keys)
    ]
    if spec.trust.detached.key is not None:
        refs.append(("trust.detached.key", spec.trust.detached.key))
    for name, ref in refs:
        scheme, _, rest = loaded.resolve_key_uri(ref, name).partition(":")
        if scheme == "file2" and not Path(rest).is_file():
            raise UsageError(f"{where}: {name}: key file {rest} does not exist", hint=hint)
    lock = loaded.lock_path
    if lock is not None and not lock.is_file():
        if plan.extracted is not None and lock.absolute().is_relative_to(plan.extracted):
            plan.lock_copy = lock  # the carried lock, where the carried spec expects it
        else:
            raise UsageError(f"{where}: python.lock: {lock} does not exist", hint=hint)
    for i, image in enumerate(spec.images):
        if image.source == "oci" and image.path and not loaded.resolve_path(image.path, f"images[{i}].path").exists():
            raise UsageError(f"{where}: images[{i}].path: {image.path} does not exist", hint=hint)
    if plan.extracted is None:
        for i, f in enumerate(spec.files):
            if not loaded.resolve_path(f.src, f"files[{i}].src").is_file():
                raise UsageError(f"{where}: files[{i}].src: {f.src} is not a file", hint=hint)


def init(
    archive: Path, store_dir: Path, *, base: Path | None, root_file: Path | None, root_sha256: str | None
) -> dict[str, Any]:
    """A mirror store set up from an appliance (by default the one chiron runs from): its spec, lock,
    root chain, wheels and images; later refreshes sign its tool again unless --tool-wheels is given."""
    return restore(archive, store_dir, base=base, root_file=root_file, root_sha256=root_sha256, op="mirror init")
