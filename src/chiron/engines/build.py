"""Build an appliance: lock, fetch, build the tool zip, sign everything with TUF, write the file.

``build`` runs its steps in order, and refuses everything it can before it writes anything: a spec
or key that does not load, metadata that would already be expired (an old SOURCE_DATE_EPOCH), and a
version that would fork a mirror store's sequence (the store signs this appliance under the same
root directory: a build would sign its build time as the version, above the store's N, and every
host that installs it would then refuse the store's next refresh as a rollback).

The public names here (``__all__``) are what other engines (mirror, rebuild) use.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import Root, TargetFile

from chiron import __version__
from chiron.archive.layout import FORMAT, PIECE, SHEBANG_TARGET, TOOL_MEMBERS_TARGET, TOOL_TARGET
from chiron.archive.writer import ArchiveWriter, Written
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.clock import utc_from_epoch
from chiron.core.fs import write_atomic
from chiron.core.models import ApplianceSpec, ImageRef, parse_duration
from chiron.core.spec import LoadedSpec, load_spec
from chiron.core.storestate import claim_path, find_claim
from chiron.core.text import canonical_json
from chiron.errors import ArtifactError, Refused, SigningKeyError, SpecError, UsageError
from chiron.sources import images as _images
from chiron.sources import lock as _lock
from chiron.sources import sbom as _sbom
from chiron.sources.cache import ArtifactCache
from chiron.sources.tool import ToolFormat, platforms_for
from chiron.sources.toolcache import ToolZip, cached_tool_zip
from chiron.trust import keys as _keys
from chiron.trust import metadata as _trust
from chiron.trust.sshsig import ssh_signature

__all__ = [
    "BuildOptions",
    "BuildResult",
    "build",
    "check_no_fork",
    "check_validity",
    "image_refs",
    "iso",
    "root_dir_of",
    "source_date_epoch",
]


@dataclass(frozen=True)
class BuildOptions:
    spec: Path
    output: Path
    tool_wheels: Path
    cache_dir: Path
    tool_format: ToolFormat = "pex"
    source_date_epoch: int | None = None
    metadata_version: int | None = None  # default: the build time in seconds (always increasing)
    shebang: str = "/usr/bin/env python3"
    show_progress: bool = True
    # Rebuilds from an appliance (rebuild.py) take these from the archive instead of the spec's paths.
    base_dir: Path | None = None  # where the spec's relative paths (keys) resolve; default: its folder
    root_chain: Path | None = None  # instead of trust.root
    lock_file: Path | None = None  # instead of python.lock / resolving
    files_dir: Path | None = None  # [[files]] sources as files_dir/DEST
    tool: ToolZip | None = None  # an already normalized tool zip, instead of building one
    images: tuple[Path, list[dict[str, Any]]] | None = None  # an OCI layout and its recorded images
    appliance_version: str | None = None  # instead of the spec's (a mirror release; a rebuild's record)
    # A mirror refresh signs the store's own next version and a rebuild an existing one: neither forks.
    check_store: bool = True
    # Only for drills and tests of the verifier: sign metadata that is already expired.
    allow_expired: bool = False


@dataclass
class BuildResult:
    output: Path
    signature: Path
    size: int
    name: str
    version: str
    targets: int
    wheels: int
    root_fingerprint: str
    downloaded: int
    reused: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "signature": str(self.signature),
            "size": self.size,
            "name": self.name,
            "version": self.version,
            "targets": self.targets,
            "wheels": self.wheels,
            "root_fingerprint": self.root_fingerprint,
            "downloaded": self.downloaded,
            "reused": self.reused,
            "seconds": round(self.seconds, 3),
        }


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def image_refs(loaded: LoadedSpec) -> list[ImageRef]:
    """The spec's images with OCI-layout paths resolved against the spec's folder."""
    return [
        i.model_copy(update={"path": str(loaded.resolve_path(i.path, f"images[{n}].path"))}) if i.path else i
        for n, i in enumerate(loaded.spec.images)
    ]


def source_date_epoch(explicit: int | None) -> int | None:
    if explicit is not None:
        return explicit
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None:
        return None
    try:
        return int(env)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not an integer number of seconds") from None


# ---------------------------------------------------------------- checks made before anything is written


def check_validity(
    spec: ApplianceSpec, root: Root, built_at: datetime, now: datetime, *, allow_expired: bool = False
) -> list[str]:
    """Refuse metadata that would already be expired now (a build time far in the past); return
    warnings where a role's validity is shorter than the spec's carry interval."""
    for role in () if allow_expired else _trust.ONLINE_ROLES:
        expires = built_at + timedelta(seconds=spec.trust.roles[role].expires_seconds)
        if expires <= now:
            raise UsageError(
                f"role {role}: metadata built at {iso(built_at)} with expires = "
                f"{spec.trust.roles[role].expires} would expire at {iso(expires)}, before now ({iso(now)}): "
                "every host would refuse it",
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
    """A key that the root does not list: say what to do after a rotation, not "rotate the root"."""
    if "of the root metadata" not in exc.message:
        return exc
    given = loaded.resolve_path(loaded.spec.trust.root, "trust.root")
    newest = _trust.parse_root(chain[-1], "root").signed.version
    later = (
        sorted(
            int(p.name.split(".")[0])
            for p in given.parent.glob("*.root.json")
            if p.name.split(".")[0].isdigit() and int(p.name.split(".")[0]) > newest
        )
        if given.is_file()
        else []
    )
    if later:
        hint = (
            f"trust.root names {given.name} (root version {newest}), but {given.parent} holds root version "
            f"{later[-1]}: after a rotation, set trust.root to the chain directory {given.parent}"
        )
    elif len(chain) > 1:
        hint = (
            f"the newest root (version {newest}) does not list this key: after a rotation, each "
            "trust.roles key must be one root version "
            f"{newest} lists (replace a revoked key's URI with its successor's)"
        )
    else:
        return exc
    return SigningKeyError(exc.message, hint=hint)


def _signers(loaded: LoadedSpec, chain: list[bytes]) -> tuple[dict[str, list[Any]], Any]:
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


# ---------------------------------------------------------------- the build


@dataclass
class _Inputs:
    """What the payload is made of, gathered before the archive is written."""

    loaded: LoadedSpec
    chain: list[bytes]
    now: datetime
    version: int
    lock: _lock.Lock
    pylock: bytes
    paths: dict[str, Path]
    notes: list[str]


def build(opts: BuildOptions) -> BuildResult:
    """Build the appliance described by ``opts``; the output appears atomically or not at all."""
    started = time.monotonic()
    loaded = load_spec(opts.spec)
    if opts.base_dir is not None:
        loaded = LoadedSpec(spec=loaded.spec, path=(opts.base_dir / opts.spec.name).absolute(), raw=loaded.raw)
    spec = loaded.spec
    epoch = source_date_epoch(opts.source_date_epoch)
    now = utc_from_epoch(epoch if epoch is not None else int(time.time()))
    platforms, notes = platforms_for(opts.tool_format, spec.environments)
    version = spec.appliance.version if opts.appliance_version is None else opts.appliance_version

    with _telemetry.span("chiron.build", appliance=spec.appliance.name, version=version) as sp:
        chain = _trust.load_root_chain(opts.root_chain or loaded.resolve_path(spec.trust.root, "trust.root"))
        root = _trust.parse_root(chain[-1], "root").signed
        warnings = check_validity(spec, root, now, utc_from_epoch(int(time.time())), allow_expired=opts.allow_expired)
        signers, detached = _signers(loaded, chain)
        metadata_version = opts.metadata_version or int(now.timestamp())
        if opts.check_store and opts.root_chain is None:
            check_no_fork(loaded, chain, metadata_version)
        lock = _lock.load_lock(loaded, opts.lock_file)
        cache = ArtifactCache(opts.cache_dir)
        with _telemetry.span("chiron.fetch", artifacts=len(lock.artifacts())):
            fetched = cache.fetch_all(lock.artifacts())
        _lock.fill_hashes(lock, fetched.measured)
        inputs = _Inputs(
            loaded, chain, now, metadata_version, lock, _lock.write_pylock(lock, spec), fetched.paths, notes
        )
        with tempfile.TemporaryDirectory(prefix="chiron-build-") as tmp_s:
            tmp = Path(tmp_s)
            with _telemetry.span("chiron.build.tool", format=opts.tool_format):
                tool = opts.tool or cached_tool_zip(
                    fmt=opts.tool_format,
                    wheels=opts.tool_wheels,
                    shebang=opts.shebang,
                    platforms=platforms,
                    cache_dir=opts.cache_dir,
                    work=tmp,
                )
            if tool.note:
                notes.append(tool.note)
            whole, targets = _write(opts, inputs, version, tool, signers, tmp)
        sig_path = opts.output.with_name(opts.output.name + ".sig")
        write_atomic(sig_path, ssh_signature(detached, spec.trust.detached.namespace, whole))
        size = opts.output.stat().st_size
        _telemetry.set_attr(sp, bytes=size, targets=targets, downloaded=cache.stats.downloaded)
        _telemetry.count("chiron.build.downloads", cache.stats.downloaded)
        _telemetry.observe("chiron.build.duration", time.monotonic() - started)
    return BuildResult(
        output=opts.output,
        signature=sig_path,
        size=size,
        name=spec.appliance.name,
        version=version,
        targets=targets,
        wheels=len(fetched.paths),
        root_fingerprint=_trust.fingerprint(chain[0]),
        downloaded=cache.stats.downloaded,
        reused=cache.stats.reused,
        seconds=time.monotonic() - started,
        notes=notes,
        warnings=warnings,
    )


def _images_for(opts: BuildOptions, loaded: LoadedSpec, tmp: Path) -> tuple[Path, list[_images.PackedImage]]:
    """The OCI layout to pack and its images: the given one (refresh, rebuild), else fetched now."""
    with _telemetry.span("chiron.build.images", images=len(loaded.spec.images)):
        if opts.images is not None:
            layout, recorded = opts.images
            return layout, _images.from_layout(layout, recorded)
        layout = tmp / "oci"
        return layout, _images.fetch(image_refs(loaded), layout)


def _manifest(
    opts: BuildOptions, inputs: _Inputs, version: str, images: list[_images.PackedImage], layout: Path
) -> dict[str, Any]:
    spec = inputs.loaded.spec
    return {
        "format": FORMAT,
        "name": spec.appliance.name,
        "version": version,
        "description": spec.appliance.description,
        "created": iso(inputs.now),
        "chiron_version": __version__,
        "tool_format": opts.tool_format,
        "environments": [e.model_dump() for e in spec.environments],
        "images": [i.as_dict() for i in images],
        "images_shared_bytes": _shared_bytes(images, layout),
        # Which kind of key signed each role (file2, hsm, awskms, ...), for inspect.
        "signers": {
            role: sorted({k.uri.partition(":")[0] for k in spec.trust.roles[role].keys}) for role in _trust.ONLINE_ROLES
        },
    }


def _write(
    opts: BuildOptions,
    inputs: _Inputs,
    version: str,
    tool: ToolZip,
    signers: dict[str, list[Any]],
    tmp: Path,
) -> tuple[bytes, int]:
    """Write the archive: payload members, images, signed metadata, the tool zip. Returns the whole
    file's bytes for the detached signature, and the number of targets."""
    shebang = f"#!{opts.shebang}\n".encode()
    layout, images = _images_for(opts, inputs.loaded, tmp)
    manifest = _manifest(opts, inputs, version, images, layout)
    written: list[tuple[Written, str]] = []
    writer = ArchiveWriter(opts.output, shebang)
    try:
        writer_targets(writer, written, manifest, inputs, tool.members, opts, images=images)
        for name, source in _images.members(layout, images):
            w = writer.add_bytes(name, source) if isinstance(source, bytes) else writer.add_file(name, source)
            written.append((w, "image"))
        targets = {w.name: _target(w, kind) for w, kind in written}
        targets[SHEBANG_TARGET] = TargetFile.from_data(SHEBANG_TARGET, shebang, ["sha256"])
        targets[SHEBANG_TARGET].unrecognized_fields["custom"] = {"kind": "shebang"}
        targets[TOOL_TARGET] = TargetFile.from_file(TOOL_TARGET, str(tool.path), ["sha256"])
        targets[TOOL_TARGET].unrecognized_fields["custom"] = {"kind": "tool", "format": opts.tool_format}
        spec = inputs.loaded.spec
        expires = {r: timedelta(seconds=spec.trust.roles[r].expires_seconds) for r in _trust.ONLINE_ROLES}
        metadata = _trust.build_repository(
            inputs.chain, signers, targets, now=inputs.now, expires=expires, version=inputs.version
        )
        for name in sorted(metadata, key=_metadata_order):
            writer.add_bytes(name, metadata[name])
        whole = writer.finish(tool.path, opts.tool_format)
    except BaseException:
        writer.abort()
        raise
    return whole, len(targets)


def _shared_bytes(images: list[_images.PackedImage], layout: Path) -> int:
    """Bytes of blobs that more than one image uses (stored once in the appliance)."""
    from collections import Counter

    uses = Counter(d for i in images for d in i.layers)
    return sum((layout / "blobs" / "sha256" / d.partition(":")[2]).stat().st_size for d, n in uses.items() if n > 1)


def _metadata_order(name: str) -> tuple[int, int, str]:
    # Root chain first (by version), then the rest; any fixed order keeps the output reproducible.
    base = name.removeprefix("metadata/")
    head = base.split(".")[0]
    return (0, int(head), base) if head.isdigit() else (1, 0, base)


def _target(w: Written, kind: str) -> TargetFile:
    tf = TargetFile(length=w.length, hashes={"sha256": w.sha256}, path=w.name)
    custom: dict[str, Any] = {"kind": kind}
    if w.pieces:
        custom["pieces"] = {"size": PIECE, "sha256": list(w.pieces)}
    tf.unrecognized_fields["custom"] = custom
    return tf


def writer_targets(
    writer: ArchiveWriter,
    written: list[tuple[Written, str]],
    manifest: dict[str, Any],
    inputs: _Inputs,
    tool_members: list[dict[str, Any]],
    opts: BuildOptions,
    *,
    images: list[_images.PackedImage],
) -> None:
    """Write every payload member that is a signed target, in a fixed order (the image layout comes
    after these; ``images`` is only described here, in the SBOM)."""
    loaded, lock, paths = inputs.loaded, inputs.lock, inputs.paths
    spec = loaded.spec
    written.append((writer.add_bytes("appliance.json", canonical_json(manifest)), "manifest"))
    written.append((writer.add_bytes("spec/appliance.toml", loaded.raw), "spec"))
    written.append((writer.add_bytes("lock/pylock.toml", inputs.pylock), "lock"))
    for env in spec.environments:
        data = _lock.requirements_txt(lock, env.name)
        written.append((writer.add_bytes(f"lock/requirements-{env.name}.txt", data), "lock"))
    written.append((writer.add_bytes(_sbom.MEMBER, _sbom.make(manifest, lock, paths, images)), "sbom"))
    written.append((writer.add_bytes(TOOL_MEMBERS_TARGET, canonical_json(tool_members)), "tool-members"))
    total = sum(p.stat().st_size for p in paths.values())
    with _progress.bar(total, "packing wheels", enabled=opts.show_progress) as bar:
        for art in lock.artifacts():
            w = writer.add_file(f"wheels/{art.filename}", paths[art.filename])
            if w.sha256 != art.sha256:
                raise ArtifactError(
                    f"{art.filename}: cached copy {paths[art.filename]} has sha256 {w.sha256}, the lock pins "
                    f"{art.sha256}",
                    hint="the cache was modified; delete that file and build again",
                )
            written.append((w, "wheel"))
            bar.advance(w.length)
    for i, extra in enumerate(sorted(spec.files, key=lambda f: f.dest)):
        src = opts.files_dir / extra.dest if opts.files_dir else loaded.resolve_path(extra.src, f"files[{i}].src")
        if not src.is_file():
            raise SpecError(f"{loaded.path}: files[{i}].src: {src} is not a file")
        written.append((writer.add_file(f"files/{extra.dest}", src), "file"))
