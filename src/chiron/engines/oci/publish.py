"""``chiron publish``: push a verified appliance into an OCI registry, one blob per region.

Blobs the registry already holds (earlier versions share most of them) are not sent again. The
detached signature and the SBOM are attached as referrers; the images the appliance carries are also
pushed as ordinary images (their blobs mounted from the appliance's repository, not sent twice), so
container engines in the enclave pull them by digest or tag.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive import delta
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.fs import CHUNK, private_tempdir, read_small
from chiron.engines.oci import artifact as _art
from chiron.engines.oci.images import push_images
from chiron.engines.verify import VerifyReport, verified
from chiron.errors import UsageError, VerificationError
from chiron.sources.oci import (
    EMPTY_JSON,
    MANIFEST,
    Access,
    Registry,
    descriptor,
    digest_of,
    open_region,
    opened,
    parse_reference,
)


@dataclass
class PublishOptions:
    archive: Path
    target: str
    access: Access = field(default_factory=Access)
    tags: list[str] = field(default_factory=list)
    default_tag: str | None = None  # when the target names none; else the appliance's version
    signature: Path | None = None  # default: ARCHIVE.sig when it exists
    root_file: Path | None = None
    root_sha256: str | None = None
    images: str = "push"  # or "skip"
    images_prefix: str = ""
    jobs: int = 4
    show_progress: bool = False


@dataclass
class PublishResult:
    reference: str
    digest: str
    name: str
    version: str
    size: int
    tags: list[str]
    blobs: int
    uploaded_blobs: int
    uploaded_bytes: int
    referrers: list[dict[str, str]]
    images: list[str]
    notices: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.publish/1",
            "reference": self.reference,
            "digest": self.digest,
            "appliance": {"name": self.name, "version": self.version},
            "size": self.size,
            "tags": self.tags,
            "blobs": self.blobs,
            "uploaded_blobs": self.uploaded_blobs,
            "uploaded_bytes": self.uploaded_bytes,
            "referrers": self.referrers,
            "images": self.images,
            "notices": self.notices,
            "seconds": round(self.seconds, 3),
        }


def publish(opts: PublishOptions) -> PublishResult:
    """Verify ``opts.archive``, then push it to ``opts.target`` (``oci://HOST/REPO[:TAG]``)."""
    started = time.monotonic()
    ref = parse_reference(opts.target)
    if ref.digest:
        raise UsageError(f"{ref}: publish to a tag, not a digest (the digest is the manifest's own)")
    if opts.images not in ("push", "skip"):
        raise UsageError(f"--images: '{opts.images}' is not push or skip")
    if opts.jobs < 1:
        raise UsageError(f"--jobs: {opts.jobs} is not a positive number")
    sig = opts.signature or opts.archive.with_name(opts.archive.name + ".sig")
    signature = read_small(sig, _art.MAX_SIGNATURE, "signature") if opts.signature or sig.is_file() else None
    with (
        verified(opts.archive, root_file=opts.root_file, root_sha256=opts.root_sha256) as report,
        _telemetry.span("chiron.publish", target=str(ref)),
        opened(ref.host, opts.access) as registry,
    ):
        if not report.ok:
            raise VerificationError(report.problems, hint="only a verified appliance is published")
        info = _info(report)
        regions = delta.extents(opts.archive)
        whole = _sha256(opts.archive)
        config = _art.config_bytes(info, report.size, whole)
        manifest = _art.manifest_bytes(regions, config, info)
        uploaded = _push_regions(registry, ref.repository, opts, regions)
        _push_bytes(registry, ref.repository, config)
        tags = list(dict.fromkeys([ref.tag or opts.default_tag or _art.tag_for(info["version"]), *opts.tags]))
        for tag in tags:
            registry.put_manifest(ref.repository, tag, manifest, MANIFEST)
        digest = digest_of(manifest)
        referrers = _attach(registry, ref.repository, (digest, len(manifest)), regions, signature, info)
        notices = [] if signature else [f"{sig}: no detached signature beside the appliance; none was attached"]
        images: list[str] = []
        if opts.images == "push" and report.manifest.get("images"):
            images = push_images(registry, ref.repository, report.verified, opts.images_prefix)
    return PublishResult(
        reference=str(ref.__class__(ref.host, ref.repository, tags[0], digest)),
        digest=digest,
        name=info["name"],
        version=info["version"],
        size=report.size,
        tags=tags,
        blobs=len({sha for *_x, sha in regions}),
        uploaded_blobs=len(uploaded),
        uploaded_bytes=sum(uploaded.values()),
        referrers=referrers,
        images=images,
        notices=notices,
        seconds=time.monotonic() - started,
    )


def _info(report: VerifyReport) -> dict[str, Any]:
    m = report.manifest
    return {
        "name": str(m.get("name")),
        "version": str(m.get("version")),
        "created": str(m.get("created")),
        "tool_format": str(m.get("tool_format")),
        "root_sha256": report.root_fingerprint,
        "metadata_version": report.roles.get("targets", {}).get("version", ""),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _push_regions(
    registry: Registry, repository: str, opts: PublishOptions, regions: list[tuple[str, int, int, str]]
) -> dict[str, int]:
    """Push every region's blob the registry lacks, ``opts.jobs`` at a time; digest -> bytes sent."""
    first: dict[str, tuple[int, int]] = {}
    for _name, off, length, sha in regions:
        first.setdefault(f"sha256:{sha}", (off, length))
    sent: dict[str, int] = {}
    total = sum(length for _o, length in first.values())
    with (
        _progress.bar(total, "publishing", enabled=opts.show_progress) as bar,
        ThreadPoolExecutor(max_workers=opts.jobs) as pool,
    ):

        def one(item: tuple[str, tuple[int, int]]) -> None:
            digest, (off, length) = item
            if registry.push_blob(repository, digest, open_region(opts.archive, off, length)):
                sent[digest] = length
            bar.advance(length)

        for _ in pool.map(one, first.items()):
            pass
    return sent


def _push_bytes(registry: Registry, repository: str, data: bytes) -> None:
    """A small blob from memory (the config, the signature, the empty config of a referrer)."""
    with private_tempdir("chiron-publish-") as tmp:
        blob = tmp / "blob"
        blob.write_bytes(data)
        registry.push_blob(repository, digest_of(data), open_region(blob, 0, len(data)))


def _attach(
    registry: Registry,
    repository: str,
    subject: tuple[str, int],
    regions: list[tuple[str, int, int, str]],
    signature: bytes | None,
    info: dict[str, Any],
) -> list[dict[str, str]]:
    """Attach the signature and the SBOM to the appliance's manifest as referrers."""
    out = []
    annotations = {_art.TITLE: info["name"], _art.VERSION: info["version"], _art.CREATED: info["created"]}
    _push_bytes(registry, repository, EMPTY_JSON)
    layers: list[tuple[str, dict[str, Any]]] = []
    if signature is not None:
        _push_bytes(registry, repository, signature)
        title = f"{info['name']}-{info['version']}.pex.sig"
        layers.append((_art.SIGNATURE_TYPE, descriptor(_art.SSHSIG_TYPE, signature, annotations={_art.TITLE: title})))
    sbom = next(((length, sha) for name, _o, length, sha in regions if name == _art.SBOM_MEMBER), None)
    if sbom is not None:
        layer = {
            "mediaType": _art.SBOM_TYPE,
            "digest": f"sha256:{sbom[1]}",
            "size": sbom[0],
            "annotations": {_art.TITLE: _art.SBOM_MEMBER},
        }
        layers.append((_art.SBOM_TYPE, layer))
    for artifact_type, layer in layers:
        raw = _art.referrer_bytes(subject, artifact_type, layer, annotations)
        entry = {"artifactType": artifact_type, "annotations": annotations}
        digest = registry.attach(repository, raw, entry)
        out.append({"artifact_type": artifact_type, "digest": digest})
    return out
