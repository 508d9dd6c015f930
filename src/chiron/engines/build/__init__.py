"""Build an appliance: lock, fetch, build the tool zip, sign everything with TUF, write the file.

``build`` runs its steps in order, and refuses everything it can before it writes anything: a spec
or key that does not load, metadata that would already be expired (an old SOURCE_DATE_EPOCH), and a
version that would fork a mirror store's sequence (the store signs this appliance under the same
root directory: a build would sign its build time as the version, above the store's N, and every
host that installs it would then refuse the store's next refresh as a rollback).

The package: ``options`` (what a build takes and gives), ``checks`` (what is refused before
anything is written), ``write`` (the archive's members, metadata and tool zip). The names in
``__all__`` are what other engines (mirror, rebuild) use.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from chiron.core import telemetry as _telemetry
from chiron.core.clock import utc_from_epoch
from chiron.core.fs import write_atomic
from chiron.core.spec import LoadedSpec, load_spec
from chiron.sources import lock as _lock
from chiron.sources.cache import ArtifactCache
from chiron.sources.tool import platforms_for
from chiron.sources.toolcache import ToolZip, cached_tool_zip
from chiron.trust import metadata as _trust
from chiron.trust.sshsig import ssh_signature

from .checks import check_compose, check_no_fork, check_validity, load_signers, root_dir_of
from .options import BuildOptions, BuildResult, image_refs, source_date_epoch
from .write import Inputs, write_archive

__all__ = [
    "BuildOptions",
    "BuildResult",
    "build",
    "check_no_fork",
    "check_validity",
    "image_refs",
    "root_dir_of",
    "source_date_epoch",
]


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
    check_compose(loaded, opts.files_dir)
    version = spec.appliance.version if opts.appliance_version is None else opts.appliance_version

    with _telemetry.span("chiron.build", appliance=spec.appliance.name, version=version) as sp:
        chain = _trust.load_root_chain(opts.root_chain or loaded.resolve_path(spec.trust.root, "trust.root"))
        root = _trust.parse_root(chain[-1], "root").signed
        warnings = check_validity(spec, root, now, utc_from_epoch(int(time.time())), allow_expired=opts.allow_expired)
        signers, detached = load_signers(loaded, chain)
        metadata_version = opts.metadata_version or int(now.timestamp())
        if opts.check_store and opts.root_chain is None:
            check_no_fork(loaded, chain, metadata_version)
        lock = _lock.load_lock(loaded, opts.lock_file)
        cache = ArtifactCache(opts.cache_dir)
        with _telemetry.span("chiron.fetch", artifacts=len(lock.artifacts())):
            fetched = cache.fetch_all(lock.artifacts())
        _lock.fill_hashes(lock, fetched.measured)
        inputs = Inputs(
            loaded, chain, now, metadata_version, lock, _lock.write_pylock(lock, spec), fetched.paths, notes
        )
        with tempfile.TemporaryDirectory(prefix="chiron-build-") as tmp_s:
            tool = _tool(opts, platforms, Path(tmp_s))
            notes += [tool.note] if tool.note else []
            whole, targets = write_archive(opts, inputs, version, tool, signers, Path(tmp_s))
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


def _tool(opts: BuildOptions, platforms: list[str], work: Path) -> ToolZip:
    """The given tool zip (a rebuild, a refresh), else the cached or newly built one."""
    if opts.tool is not None:
        return opts.tool
    with _telemetry.span("chiron.build.tool", format=opts.tool_format):
        return cached_tool_zip(
            fmt=opts.tool_format,
            wheels=opts.tool_wheels,
            shebang=opts.shebang,
            platforms=platforms,
            cache_dir=opts.cache_dir,
            work=work,
        )
