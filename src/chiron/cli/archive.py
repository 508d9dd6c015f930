"""Commands on appliance files: verify, inspect, build, rebuild, diff, lock, delta."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from chiron.cli.app import (
    JsonOpt,
    app,
    archive_arg,
    emit,
    log,
    say,
    setting,
    state,
    tool_wheels_dir,
)
from chiron.errors import ExitCode

if TYPE_CHECKING:
    from chiron.sources.tool import ToolFormat


@app.command()
def verify(
    path: Annotated[
        Path | None, typer.Argument(help="Appliance (or one volume of it) to verify; default: the one running.")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Trusted root metadata (JSON) obtained out of band.")
    ] = None,
    root_sha256: Annotated[
        str | None, typer.Option("--root-sha256", help="sha256 of a trusted root metadata file.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify every byte of an appliance (or of one volume) against its TUF metadata. Exit 0 verified, 1 failed."""
    from chiron.archive.volume import is_volume

    target = archive_arg(path, "verify")
    if is_volume(target):
        from chiron.engines.media import verify_volume as run_verify
    else:
        from chiron.engines.verify import verify as run_verify
    report = run_verify(target, root_file=root, root_sha256=root_sha256, show_progress=not as_json)
    if as_json:
        emit(report.as_dict())
    else:
        for notice in report.notices:
            log("notice", notice)
        for warning in report.warnings:
            log("warning", warning)
        if report.ok and report.volume is not None:
            v = report.volume
            say(
                f"verified {target}: volume {v['number']} of {v['count']} of {report.name} {report.version} (bytes "
                f"{v['offset']}-{v['offset'] + v['length']} of {v['file']}), {report.bytes_hashed} bytes hashed "
                f"against the signed targets, every byte accounted for (anchor: {report.trust_anchor})"
            )
        elif report.ok:
            say(
                f"verified {target}: {report.name} {report.version}, {report.targets} signed targets, "
                f"{report.bytes_hashed} bytes hashed, every byte accounted for (anchor: {report.trust_anchor})"
            )
        else:
            if state["log_format"] == "json":
                for p in report.problems:
                    log("error", p, path=str(target))
            else:
                say(f"chiron: verification FAILED for {target}", err=True)
                for p in report.problems:
                    say(f"  - {p}", err=True)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.VERIFY_FAILED)


@app.command()
def inspect(
    path: Annotated[Path | None, typer.Argument(help="Appliance to describe; default: the one running.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe an appliance: packages, platforms, targets, TUF roles (does not verify)."""
    from chiron.engines.inspect import inspect_archive, render

    info = inspect_archive(archive_arg(path, "inspect"))
    if as_json:
        emit(info)
    else:
        say(render(info))


@app.command()
def build(
    spec: Annotated[Path, typer.Argument(help="The appliance spec (appliance.toml).")] = Path("bundle/appliance.toml"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the appliance.")] = Path(
        "dist/chiron.pex"
    ),
    fmt: Annotated[str, typer.Option("--format", help="Tool zip format: pex or shiv.")] = "pex",
    tool_wheels: Annotated[
        Path | None,
        typer.Option(help="Wheels of chiron and its dependencies (default: $CHIRON_TOOL_WHEELS)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Artifact cache (default: $CHIRON_CACHE_DIR, else $XDG_CACHE_HOME/chiron, else ~/.cache/chiron)."
        ),
    ] = None,
    source_date_epoch: Annotated[
        int | None, typer.Option(help="Build time in seconds since 1970 (default: $SOURCE_DATE_EPOCH).")
    ] = None,
    metadata_version: Annotated[
        int | None,
        typer.Option(min=1, help="Version of targets/snapshot/timestamp (default: the build time in seconds)."),
    ] = None,
    shebang: Annotated[str, typer.Option(help="Interpreter line of the appliance.")] = "/usr/bin/env python3",
    as_json: JsonOpt = False,
) -> None:
    """Build a signed appliance from a spec."""
    from chiron.engines.build import BuildOptions
    from chiron.engines.build import build as run_build
    from chiron.errors import UsageError
    from chiron.sources.cache import default_cache_dir

    if fmt not in ("pex", "shiv"):
        raise UsageError(f"--format: '{fmt}' is not pex or shiv")
    opts = BuildOptions(
        spec=spec,
        output=output,
        tool_wheels=tool_wheels_dir(tool_wheels),
        cache_dir=setting("mirror.cache_dir", cache_dir) or default_cache_dir(),
        tool_format=cast("ToolFormat", fmt),
        source_date_epoch=source_date_epoch,
        metadata_version=metadata_version,
        shebang=shebang,
        show_progress=not as_json,
    )
    result = run_build(opts)
    for note in result.notes:
        log("notice", note)
    for warning in result.warnings:
        log("warning", warning)
    if as_json:
        emit({"schema": "chiron.build/1", **result.as_dict()})
    else:
        say(
            f"built {result.output} ({result.name} {result.version}, {result.size} bytes, {result.targets} targets, "
            f"{result.wheels} wheels: {result.downloaded} downloaded, {result.reused} from cache)"
        )
        say(f"detached signature: {result.signature}")
        say(f"root fingerprint: {result.root_fingerprint}")


@app.command()
def rebuild(
    archive: Annotated[Path, typer.Argument(help="The appliance to rebuild from what it carries.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the rebuild.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 0 only if byte-identical; else 1 with causes.")] = False,
    online: Annotated[
        bool, typer.Option("--online", help="Fetch wheels from the lock's URLs, not the archive.")
    ] = False,
    base: Annotated[
        Path, typer.Option("--base", help="Folder the spec's relative key paths resolve against (e.g. bundle).")
    ] = Path("."),
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the archive first.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Artifact cache for --online.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild an appliance from its own spec, lock, wheels and tool code, and compare member by member."""
    from chiron.engines.rebuild import rebuild as run_rebuild
    from chiron.sources.cache import default_cache_dir

    out = output or archive.with_name(archive.name + ".rebuilt")
    result = run_rebuild(
        archive,
        out,
        base=base,
        tool_wheels=None,
        cache_dir=setting("mirror.cache_dir", cache_dir) or default_cache_dir(),
        online=online,
        root_file=root,
        root_sha256=root_sha256,
    )
    if as_json:
        emit(result.as_dict())
    elif result.identical:
        say(f"rebuilt {out}: byte-identical to {archive}")
    else:
        say(f"rebuilt {out}: DIFFERS from {archive}")
        for d in result.differences[:10]:
            say(f"  - {d['member']}: {d['cause']}")
    raise typer.Exit(ExitCode.VERIFY_FAILED if check and not result.identical else ExitCode.OK)


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The older appliance.")],
    new: Annotated[Path, typer.Argument(help="The newer appliance.")],
    as_json: JsonOpt = False,
) -> None:
    """What changed: packages added, removed, upgraded (versions, sizes, licences) and images."""
    from chiron.engines.diff import diff as run_diff
    from chiron.engines.diff import render

    result = run_diff(old, new)
    if as_json:
        emit(result)
    else:
        say(render(result))


@app.command()
def lock(
    spec: Annotated[Path, typer.Argument(help="The appliance spec.")] = Path("bundle/appliance.toml"),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Lock file (default: the spec's python.lock).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Resolve the spec's requirements for every environment; write pylock.toml and requirements files."""
    from chiron.engines.lock import lock as run_lock

    result = run_lock(spec, output)
    written = [str(w) for w in result.written]
    if as_json:
        emit({"schema": "chiron.lock/1", "written": written, "packages": result.packages})
    else:
        say(f"locked {result.packages} packages for {result.environments} environment(s)")
        for w in written:
            say(f"  wrote {w}")


@app.command("delta")
def make_delta(
    base: Annotated[Path, typer.Argument(help="What the host already has: an older appliance or an inventory.")],
    new: Annotated[Path, typer.Argument(help="The new appliance.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the delta.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a delta holding only what BASE lacks; the host's `upgrade` rebuilds NEW from it and verifies it."""
    from chiron.archive.delta import make

    out = output or new.with_suffix(".delta")
    made = make(base, new, out)
    if as_json:
        emit(
            {
                "schema": "chiron.delta/1",
                "output": str(made.path),
                "size": made.size,
                "carried_bytes": made.carried,
                "reused_bytes": made.reused,
            }
        )
    else:
        say(f"wrote {made.path}: {made.size} bytes ({made.carried} carried, {made.reused} from the base)")


@app.command()
def extract(
    archive: Annotated[Path | None, typer.Argument(help="The appliance; default: the one running.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="A new or empty directory for the files.")] = Path(
        "extracted"
    ),
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the appliance first.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    unverified: Annotated[
        bool,
        typer.Option("--unverified", help="Do not verify (an appliance whose metadata expired); the output says so."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the spec, lock (pylock.toml, requirements-*.txt) and SBOM an appliance carries, after verifying it."""
    from chiron.engines.extract import extract as run_extract

    target = archive_arg(archive, "extract")
    result = run_extract(target, output, root_file=root, root_sha256=root_sha256, verify=not unverified)
    if as_json:
        emit(result.as_dict())
        return
    for notice in result.notices:
        log("notice", notice)
    how = f"verified (anchor: {result.trust_anchor})" if result.verified else "NOT verified"
    say(f"extracted {len(result.files)} files of {target} into {result.directory}, {how}:")
    for name in result.files:
        say(f"  {result.directory / name}")
