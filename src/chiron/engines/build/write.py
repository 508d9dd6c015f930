"""Writing the archive: every payload member as a signed target in a fixed order, the image layout,
the TUF metadata over all of it, and the tool zip at the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    root_member_version,
)
from chiron.archive.writer import ArchiveWriter, Written
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.clock import iso
from chiron.core.spec import LoadedSpec
from chiron.core.text import canonical_json
from chiron.errors import ArtifactError, SpecError
from chiron.sources import images as _images
from chiron.sources import lock as _lock
from chiron.sources import sbom as _sbom
from chiron.sources.toolcache import ToolZip
from chiron.trust import metadata as _trust

from .options import BuildOptions, image_refs


@dataclass
class Inputs:
    """What the payload is made of, gathered before the archive is written."""

    loaded: LoadedSpec
    chain: list[bytes]
    now: datetime
    version: int
    lock: _lock.Lock
    pylock: bytes
    paths: dict[str, Path]
    notes: list[str]


def _images_for(opts: BuildOptions, loaded: LoadedSpec, tmp: Path) -> tuple[Path, list[_images.PackedImage]]:
    """The OCI layout to pack and its images: the given one (refresh, rebuild), else fetched now."""
    with _telemetry.span("chiron.build.images", images=len(loaded.spec.images)):
        if opts.images is not None:
            layout, recorded = opts.images
            return layout, _images.from_layout(layout, recorded)
        layout = tmp / "oci"
        return layout, _images.fetch(image_refs(loaded), layout)


def _manifest(
    opts: BuildOptions, inputs: Inputs, version: str, images: list[_images.PackedImage], layout: Path
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


def write_archive(
    opts: BuildOptions,
    inputs: Inputs,
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
    uses = Counter(d for i in images for d in i.layers)
    return sum((layout / "blobs" / "sha256" / d.partition(":")[2]).stat().st_size for d, n in uses.items() if n > 1)


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
    inputs: Inputs,
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
