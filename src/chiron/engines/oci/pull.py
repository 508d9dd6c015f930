"""``chiron pull`` (and ``install``/``upgrade oci://``): rebuild an appliance from a registry's blobs.

What the host already holds comes from the one place that decides it for deltas too
(archive.delta.held_pieces over its appliances: ``--have``, the file being replaced, a host's kept
releases); only the other blobs are fetched, ``jobs`` at a time, each hashed as it arrives into a
content-addressed staging directory where an interrupted pull resumes. The file is assembled in
layer order through a temporary name, every piece hash-checked as it is copied and the whole file
against the config's sha256, then verified like any appliance before it takes the output's name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from chiron.archive import delta
from chiron.core import filelock
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.fs import fsync_dir, temp_beside, write_atomic
from chiron.engines.oci import artifact as _art
from chiron.engines.verify import verify
from chiron.errors import Refused, UsageError, VerificationError
from chiron.sources.oci import MANIFEST, Access, Reference, Registry, opened, parse_reference


@dataclass
class PullOptions:
    source: str
    output: Path
    access: Access = field(default_factory=Access)
    have: list[Path] = field(default_factory=list)  # appliances, or directories of them
    staging: Path | None = None  # default: OUTPUT's directory/.chiron-pull
    jobs: int = 4
    verify: bool = True
    root_file: Path | None = None
    root_sha256: str | None = None
    signature: bool = True
    show_progress: bool = False


@dataclass
class PullResult:
    reference: str
    digest: str
    output: Path
    name: str
    version: str
    size: int
    blobs: int
    fetched_blobs: int = 0
    fetched_bytes: int = 0  # over the network, this run
    resumed_bytes: int = 0  # already in the staging directory from an interrupted run
    reused_bytes: int = 0  # copied from appliances this host holds
    signature: Path | None = None
    verified: bool = False
    trust_anchor: str = ""
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.pull/1",
            "reference": self.reference,
            "digest": self.digest,
            "output": str(self.output),
            "appliance": {"name": self.name, "version": self.version},
            "size": self.size,
            "blobs": self.blobs,
            "fetched_blobs": self.fetched_blobs,
            "fetched_bytes": self.fetched_bytes,
            "resumed_bytes": self.resumed_bytes,
            "reused_bytes": self.reused_bytes,
            "signature": str(self.signature) if self.signature else None,
            "verified": self.verified,
            "trust_anchor": self.trust_anchor,
            "notices": self.notices,
            "seconds": round(self.seconds, 3),
        }


def pull(opts: PullOptions) -> PullResult:
    """Pull ``opts.source`` into ``opts.output`` (see the module's docstring)."""
    started = time.monotonic()
    ref = parse_reference(opts.source)
    if opts.jobs < 1:
        raise UsageError(f"--jobs: {opts.jobs} is not a positive number")
    if opts.output.is_dir():
        raise UsageError(f"--output {opts.output}: is a directory; name the appliance file to write")
    staging = (opts.staging or opts.output.parent / ".chiron-pull").absolute()
    blobs = staging / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    with (
        filelock.hold(staging / "lock", "pull", hint="another pull uses this staging directory; wait for it"),
        _telemetry.span("chiron.pull", source=str(ref)),
        opened(ref.host, opts.access) as registry,
    ):
        digest, art = resolve(registry, ref)
        result = PullResult(str(ref), digest, opts.output, art.name, art.version, art.size, len(art.unique()))
        sources = _appliances(opts.have) + ([opts.output] if opts.output.is_file() else [])
        held = delta.held_pieces(sources)
        missing = {d: n for d, n in art.unique().items() if not _held(held, d, n) and not (blobs / d[7:]).is_file()}
        result.resumed_bytes = sum(_partial_size(blobs / d[7:]) for d in missing)
        _check_space(staging, opts.output, art, missing)
        _fetch(registry, ref, art, missing, blobs, opts, result)
        tmp = _assemble(art, held, blobs, opts.output, result)
        try:
            if opts.verify:
                report = verify(tmp, root_file=opts.root_file, root_sha256=opts.root_sha256)
                if not report.ok:
                    raise VerificationError(
                        [f"{ref}: {p}" for p in report.problems], hint=f"nothing was written to {opts.output}"
                    )
                result.verified, result.trust_anchor, result.notices = True, report.trust_anchor, report.notices
                result.name, result.version = str(report.name), str(report.version)  # as signed, not as the config said
            os.replace(tmp, opts.output)
            fsync_dir(opts.output.parent)
        finally:
            tmp.unlink(missing_ok=True)
        for d in art.unique():
            (blobs / d[7:]).unlink(missing_ok=True)  # now in the output; partials of others stay
        if opts.signature:
            result.signature = _signature(registry, ref, digest, opts.output, result.notices)
    if opts.staging is None:
        _tidy(staging)
    result.seconds = time.monotonic() - started
    return result


def _tidy(staging: Path) -> None:
    """Remove the default staging directory once no partial download is left in it."""
    blobs = staging / "blobs" / "sha256"
    if not any(blobs.iterdir()):
        shutil.rmtree(staging, ignore_errors=True)


def resolve(registry: Registry, ref: Reference) -> tuple[str, _art.Artifact]:
    """The manifest digest and the checked artifact a reference names."""
    manifest = registry.get_manifest(ref.repository, ref.reference, (MANIFEST,))
    if manifest is None:
        tags = [t for t in registry.tags(ref.repository) if not re.fullmatch(r"sha256-[0-9a-f]{64}", t)]
        raise UsageError(
            f"{ref}: not found in the registry",
            hint=f"its tags are {', '.join(tags[:20])}" if tags else "check the repository and tag",
        )
    doc = manifest.json()
    where = f"{ref.__class__(ref.host, ref.repository, ref.tag, manifest.digest)}"
    config_digest, size = _art.config_digest(doc, where)
    config = registry.get_blob_bytes(ref.repository, config_digest, max(size, 1), "config")
    return manifest.digest, _art.parse(doc, config, where)


def _appliances(have: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in have:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and not p.name.endswith((".sig", ".delta")))
        elif path.is_file():
            out.append(path)
        else:
            raise UsageError(f"--have {path}: not an appliance file or a directory of them")
    return out


def _held(held: dict[str, list[tuple[Path, int, int]]], digest: str, size: int) -> bool:
    return any(n == size for _p, _o, n in held.get(digest[7:], []))


def _partial_size(blob: Path) -> int:
    partial = blob.with_name(blob.name + ".partial")
    return partial.stat().st_size if partial.is_file() else 0


def _check_space(staging: Path, output: Path, art: _art.Artifact, missing: dict[str, int]) -> None:
    need_staging = sum(missing.values())
    need_output = art.size
    output.parent.mkdir(parents=True, exist_ok=True)
    same = os.stat(staging).st_dev == os.stat(output.parent).st_dev
    for where, need in ((staging, need_staging + (need_output if same else 0)), (output.parent, need_output)):
        free = shutil.disk_usage(where).free
        if free < need:
            raise Refused(
                f"not enough free space on {where} to pull {art.name} {art.version}: it needs {need >> 20} MiB, "
                f"{free >> 20} MiB are free",
                hint="free space there, or give --staging on another filesystem; nothing was changed",
            )


def _fetch(
    registry: Registry,
    ref: Reference,
    art: _art.Artifact,
    missing: dict[str, int],
    blobs: Path,
    opts: PullOptions,
    result: PullResult,
) -> None:
    """Fetch the missing blobs, ``opts.jobs`` at a time; the first failure stops the rest."""
    names = {r.digest: r.name for r in art.regions}
    total = sum(missing.values()) - result.resumed_bytes
    with (
        _progress.bar(max(total, 0), f"pulling {art.name} {art.version}", enabled=opts.show_progress) as bar,
        ThreadPoolExecutor(max_workers=opts.jobs) as pool,
    ):

        def one(digest: str) -> int:
            got = registry.fetch_blob(ref.repository, digest, missing[digest], blobs / digest[7:], names[digest])
            bar.advance(got)
            return got

        futures = [pool.submit(one, d) for d in sorted(missing, key=lambda d: -missing[d])]
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
    result.fetched_blobs = len(missing)
    result.fetched_bytes = registry.fetched_bytes


class _Hashing:
    """A file being written, hashed whole on the way (the pieces are hashed one by one too)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.f.write(data)

    def seek(self, pos: int) -> int:
        return self.f.seek(pos)

    def truncate(self) -> int:
        return self.f.truncate()

    def tell(self) -> int:
        return self.f.tell()


def _assemble(
    art: _art.Artifact, held: dict[str, list[tuple[Path, int, int]]], blobs: Path, output: Path, result: PullResult
) -> Path:
    """Write the regions in order into a temporary file beside ``output``; return its path."""
    with temp_beside(output, 0o755) as (fd, tmp), os.fdopen(os.dup(fd), "wb") as raw:
        out = _Hashing(raw)
        for region in art.regions:
            staged = blobs / region.digest[7:]
            candidates = [(staged, 0, region.size)] if staged.is_file() else []
            candidates += [c for c in held.get(region.digest[7:], []) if c[2] == region.size]
            start = raw.tell()
            for src, off, length in candidates:
                # A held copy that changed on disk is skipped for the next; hashing restarts with it.
                mark = out.h.copy()
                if delta.copy_piece(src, off, length, out) == region.digest[7:]:
                    if src != staged:
                        result.reused_bytes += length
                    break
                raw.seek(start)
                raw.truncate()
                out.h = mark
            else:
                raise VerificationError([f"{region.name}: no copy of blob {region.digest} has the right bytes"])
        raw.flush()
        os.fsync(raw.fileno())
        if out.h.hexdigest() != art.sha256:
            raise VerificationError(
                [f"{result.reference}: the blobs do not add up to the appliance the config describes (sha256)"]
            )
    return tmp  # kept by temp_beside on success; renamed over the output once verified


def _signature(registry: Registry, ref: Reference, digest: str, output: Path, notices: list[str]) -> Path | None:
    """Write the detached signature attached to the manifest as OUTPUT.sig; None (with a notice) if none is."""
    for entry in registry.referrers(ref.repository, digest):
        if entry.get("artifactType") != _art.SIGNATURE_TYPE:
            continue
        manifest = registry.get_manifest(ref.repository, str(entry["digest"]), (MANIFEST,))
        layers = manifest.json().get("layers") if manifest else None
        if not layers or not isinstance(layers[0], dict):
            continue
        layer = layers[0]
        raw = registry.get_blob_bytes(ref.repository, str(layer.get("digest")), _art.MAX_SIGNATURE, "signature")
        sig = output.with_name(output.name + ".sig")
        write_atomic(sig, raw)
        return sig
    notices.append(f"{ref}: no detached signature is attached; none was written")
    return None
