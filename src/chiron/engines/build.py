"""Build an appliance: lock, fetch, build the tool zip, sign everything with TUF, write the file."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from chiron import __version__
from chiron.archive.layout import (
    FORMAT,
    PIECE,
    SHEBANG_TARGET,
    TOOL_MEMBERS_TARGET,
    TOOL_TARGET,
    ZipTime,
    root_member_version,
)
from chiron.archive.toolzip import normalize_zip
from chiron.archive.writer import ArchiveWriter, Written
from chiron.core import compose as _compose
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.clock import utc_from_epoch
from chiron.core.fs import write_atomic
from chiron.core.models import ImageRef, TargetEnvironment
from chiron.core.spec import LoadedSpec, load_spec
from chiron.core.text import canonical_json
from chiron.errors import ArtifactError, SpecError, UsageError
from chiron.sources import images as _images
from chiron.sources import lock as _lock
from chiron.sources import sbom as _sbom
from chiron.sources.cache import ArtifactCache
from chiron.sources.tool import ToolFormat, build_tool, tool_platforms
from chiron.trust import keys as _keys
from chiron.trust import metadata as _trust
from chiron.trust.sshsig import ssh_signature

ZIP_TIME: ZipTime = (1980, 1, 1, 0, 0, 0)


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
    tool_zip: Path | None = None  # an already normalized tool zip, instead of building one
    images: tuple[Path, list[dict[str, Any]]] | None = None  # an OCI layout and its recorded images


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


def load_lock(loaded: LoadedSpec, override: Path | None = None) -> _lock.Lock:
    """The given lock, else the spec's lock file if it names one, else a fresh resolution."""
    path = override or loaded.lock_path
    if path is not None:
        lock = _lock.read_pylock(path, loaded.spec)
        _lock.check_fits(lock, loaded.spec, str(path))
        return lock
    return _lock.resolve(loaded.spec, loaded.base)


def build(opts: BuildOptions) -> BuildResult:
    """Build the appliance described by ``opts``; the output appears atomically or not at all."""
    started = time.monotonic()
    loaded = load_spec(opts.spec)
    if opts.base_dir is not None:
        loaded = LoadedSpec(spec=loaded.spec, path=(opts.base_dir / opts.spec.name).absolute(), raw=loaded.raw)
    spec = loaded.spec
    epoch = source_date_epoch(opts.source_date_epoch)
    now = utc_from_epoch(epoch if epoch is not None else int(time.time()))
    # Fixed zip entry times (as pex does): the tool zip then depends only on the tool's wheels, so it
    # is reproducible and cacheable; the build time lives in appliance.json and the metadata.
    zip_time = ZIP_TIME
    platforms, notes = platforms_for(opts.tool_format, spec.environments)
    check_compose(loaded, opts.files_dir)

    with _telemetry.span("chiron.build", appliance=spec.appliance.name, version=spec.appliance.version) as sp:
        root_chain = _trust.load_root_chain(opts.root_chain or loaded.resolve_path(spec.trust.root, "trust.root"))
        root = _trust.parse_root(root_chain[-1], "root").signed
        signers = {
            role: [
                _keys.load_signer(
                    loaded.resolve_key_uri(k, f"trust.roles.{role}.keys[{i}]"), role, root, k.keyid, k.secret_env
                )
                for i, k in enumerate(spec.trust.roles[role].keys)
            ]
            for role in _trust.ONLINE_ROLES
        }
        for role in _trust.ONLINE_ROLES:
            want = spec.trust.roles[role].threshold
            if want != root.roles[role].threshold:
                raise SpecError(
                    f"{loaded.path}: trust.roles.{role}.threshold: is {want} but the root metadata says "
                    f"{root.roles[role].threshold}"
                )
        detached_ref = spec.trust.detached.key or spec.trust.roles["targets"].keys[0]
        detached = (
            signers["targets"][0]
            if spec.trust.detached.key is None
            else _keys.load_signer(
                loaded.resolve_key_uri(detached_ref, "trust.detached.key"),
                "targets",
                root,
                detached_ref.keyid,
                detached_ref.secret_env,
            )
        )

        lock = load_lock(loaded, opts.lock_file)
        cache = ArtifactCache(opts.cache_dir)
        measured: dict[str, tuple[str, int]] = {}
        paths: dict[str, Path] = {}
        with _telemetry.span("chiron.fetch", artifacts=len(lock.artifacts())):
            for art in lock.artifacts():
                path, sha, size = cache.fetch(art.url, art.sha256, art.filename)
                measured[art.filename] = (sha, size)
                paths[art.filename] = path
        _lock.fill_hashes(lock, measured)
        pylock = _lock.write_pylock(lock, spec)

        shebang = f"#!{opts.shebang}\n".encode()
        with tempfile.TemporaryDirectory(prefix="chiron-build-") as tmp_s:
            tmp = Path(tmp_s)
            with _telemetry.span("chiron.build.tool", format=opts.tool_format):
                tool_zip, tool_members = tool_zip_for(opts, zip_time, tmp, platforms)
            layout = tmp / "oci"
            with _telemetry.span("chiron.build.images", images=len(spec.images)):
                if opts.images is not None:
                    layout, recorded = opts.images
                    images = _images.from_layout(layout, recorded)
                else:
                    images = _images.fetch(image_refs(loaded), layout)
            manifest = {
                "format": FORMAT,
                "name": spec.appliance.name,
                "version": spec.appliance.version,
                "description": spec.appliance.description,
                "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "chiron_version": __version__,
                "tool_format": opts.tool_format,
                "environments": [e.model_dump() for e in spec.environments],
                "images": [i.as_dict() for i in images],
                "images_shared_bytes": _shared_bytes(images, layout),
                # Which kind of key signed each role (file2, hsm, awskms, ...), for inspect.
                "signers": {
                    role: sorted({k.uri.partition(":")[0] for k in spec.trust.roles[role].keys})
                    for role in _trust.ONLINE_ROLES
                },
            }
            written: list[tuple[Written, str]] = []
            writer = ArchiveWriter(opts.output, shebang)
            try:
                writer_targets(
                    writer, written, manifest, loaded, pylock, lock, tool_members, paths, opts, images=images
                )
                for name, source in _images.members(layout, images):
                    w = writer.add_bytes(name, source) if isinstance(source, bytes) else writer.add_file(name, source)
                    written.append((w, "image"))
                targets = {w.name: _target(w, kind) for w, kind in written}
                targets[SHEBANG_TARGET] = TargetFile.from_data(SHEBANG_TARGET, shebang, ["sha256"])
                targets[SHEBANG_TARGET].unrecognized_fields["custom"] = {"kind": "shebang"}
                targets[TOOL_TARGET] = TargetFile.from_file(TOOL_TARGET, str(tool_zip), ["sha256"])
                targets[TOOL_TARGET].unrecognized_fields["custom"] = {
                    "kind": "tool",
                    "format": opts.tool_format,
                }
                expires = {r: timedelta(seconds=spec.trust.roles[r].expires_seconds) for r in _trust.ONLINE_ROLES}
                metadata = _trust.build_repository(
                    root_chain,
                    signers,
                    targets,
                    now=now,
                    expires=expires,
                    version=opts.metadata_version or int(now.timestamp()),
                )
                for name in sorted(metadata, key=_metadata_order):
                    writer.add_bytes(name, metadata[name])
                whole = writer.finish(tool_zip, opts.tool_format)
            except BaseException:
                writer.abort()
                raise
        sig_path = opts.output.with_name(opts.output.name + ".sig")
        sig = ssh_signature(detached, spec.trust.detached.namespace, whole)
        write_atomic(sig_path, sig)
        size = opts.output.stat().st_size
        _telemetry.set_attr(sp, bytes=size, targets=len(targets), downloaded=cache.stats.downloaded)
        _telemetry.count("chiron.build.downloads", cache.stats.downloaded)
        _telemetry.observe("chiron.build.duration", time.monotonic() - started)
    return BuildResult(
        output=opts.output,
        signature=sig_path,
        size=size,
        name=spec.appliance.name,
        version=spec.appliance.version,
        targets=len(targets),
        wheels=len(paths),
        root_fingerprint=_trust.fingerprint(root_chain[0]),
        downloaded=cache.stats.downloaded,
        reused=cache.stats.reused,
        seconds=time.monotonic() - started,
        notes=notes,
    )


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
    _compose.check_carried(_compose.parse(src.read_bytes(), where), [i.ref for i in loaded.spec.images], where)


def platforms_for(fmt: ToolFormat, environments: list[TargetEnvironment]) -> tuple[list[str], list[str]]:
    """The extra platforms the tool zip is built for, and a note when the format cannot serve them."""
    wanted = tool_platforms(environments)
    if fmt == "pex" or not wanted:
        return wanted, []
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [], [
        f"a shiv tool zip runs only on Python {here} (the build interpreter); for {', '.join(wanted)} "
        "chiron itself needs --format pex (the wheelhouse serves every environment either way)"
    ]


def tool_zip_for(
    opts: BuildOptions, zip_time: ZipTime, tmp: Path, platforms: list[str]
) -> tuple[Path, list[dict[str, Any]]]:
    """The normalized tool zip, from the cache when the same wheels, format, shebang and time built it.

    Building a pex takes seconds; a warm rebuild or a mirror refresh should not pay it again.
    """
    if opts.tool_zip is not None:
        return opts.tool_zip, tool_members_of(opts.tool_zip)
    wheels = sorted(opts.tool_wheels.glob("*.whl"))
    key_data = {
        "chiron": __version__,
        "format": opts.tool_format,
        "shebang": opts.shebang,
        "zip_time": list(zip_time),
        "wheels": {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels},
        "python": f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}",
        "platforms": platforms,
    }
    key = hashlib.sha256(canonical_json(key_data)).hexdigest()
    cache = opts.cache_dir / "tool"
    cached, record_file = cache / f"{key}.zip", cache / f"{key}.json"
    if cached.is_file() and record_file.is_file():
        record = json.loads(record_file.read_text())
        # Re-hash before reuse: whatever is cached here gets signed into the appliance.
        if hashlib.sha256(cached.read_bytes()).hexdigest() == record.get("sha256"):
            return cached, list(record["members"])
    raw, normalized = tmp / "tool.raw", tmp / "tool.zip"
    build_tool(opts.tool_format, opts.tool_wheels, raw, opts.shebang, platforms)
    members = normalize_zip(raw, normalized, zip_time)
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(normalized.read_bytes()).hexdigest()
    os.replace(normalized, cached)
    write_atomic(record_file, canonical_json({"sha256": digest, "members": members}))
    return cached, members


def _shared_bytes(images: list[_images.PackedImage], layout: Path) -> int:
    """Bytes of blobs that more than one image uses (stored once in the appliance)."""
    from collections import Counter

    uses = Counter(d for i in images for d in i.layers)
    return sum((layout / "blobs" / "sha256" / d.partition(":")[2]).stat().st_size for d, n in uses.items() if n > 1)


def tool_members_of(zip_path: Path) -> list[dict[str, Any]]:
    """The signed tool-members list of an existing (normalized) tool zip."""
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        return [
            {"name": i.filename, "size": i.file_size, "sha256": hashlib.sha256(z.read(i)).hexdigest()}
            for i in z.infolist()
            if not i.is_dir()
        ]


def _metadata_order(name: str) -> tuple[int, int, str]:
    # Root chain first (by version), then the rest; any fixed order keeps the output reproducible.
    version = root_member_version(name)
    return (0, version, name) if version is not None else (1, 0, name)


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
    loaded: LoadedSpec,
    pylock: bytes,
    lock: _lock.Lock,
    tool_members: list[dict[str, Any]],
    paths: dict[str, Path],
    opts: BuildOptions,
    *,
    images: list[_images.PackedImage],
) -> None:
    """Write every payload member that is a signed target, in a fixed order (the image layout comes
    after these; ``images`` is only described here, in the SBOM)."""
    spec = loaded.spec
    written.append((writer.add_bytes("appliance.json", canonical_json(manifest)), "manifest"))
    written.append((writer.add_bytes("spec/appliance.toml", loaded.raw), "spec"))
    written.append((writer.add_bytes("lock/pylock.toml", pylock), "lock"))
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
