"""Commands for carrying an appliance across the gap on media: split, join, receive."""

from pathlib import Path
from typing import Annotated, Any

import typer

from chiron.cli.app import JsonOpt, app, emit, log, say

RootOpt = Annotated[Path | None, typer.Option("--root", help="Trusted root metadata (JSON) obtained out of band.")]
RootShaOpt = Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root metadata file.")]


@app.command()
def split(
    archive: Annotated[Path, typer.Argument(help="The appliance (or delta) to split.")],
    size: Annotated[
        str,
        typer.Option(
            "--size",
            help="Largest volume: bytes, or with K, M, G, T (binary: 4480M for a DVD) or KB, MB, GB, TB (decimal).",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the volumes and their manifest.")],
    as_json: JsonOpt = False,
) -> None:
    """Cut an appliance (or a delta) into volumes of at most --size that each verify alone, plus a manifest."""
    from chiron.engines.media.split import parse_size
    from chiron.engines.media.split import split as run_split

    result = run_split(archive, output, parse_size(size), show_progress=not as_json)
    if as_json:
        emit(result.as_dict())
        return
    what = f"{result.name} {result.version}" if result.name else result.kind
    say(f"split {archive} ({what}, {result.size} bytes) into {len(result.volumes)} volume(s) of at most {size}:")
    for v in result.volumes:
        say(f"  {v['file']}  {v['size']} bytes")
    say(f"manifest (size and sha256 of each file): {result.manifest}")
    if result.signature is not None:
        say(f"detached signature: {result.signature}")


@app.command()
def join(
    inputs: Annotated[list[Path], typer.Argument(help="Directories (one per medium) or volume files, in any order.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the joined file.")],
    root: RootOpt = None,
    root_sha256: RootShaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join a set of volumes into the whole file, verifying every byte as it is written (one pass)."""
    from chiron.engines.media.join import join as run_join

    result = run_join(inputs, output, root_file=root, root_sha256=root_sha256, show_progress=not as_json)
    _notes(result.notices, result.warnings)
    if as_json:
        emit(result.as_dict())
        return
    what = f"{result.name} {result.version}" if result.name else result.kind
    how = (
        f"every byte verified against the signed targets (anchor: {result.trust_anchor})"
        if result.kind == "appliance"
        else "every volume checked against the sha256 its header records (a delta is verified when a host applies it)"
    )
    say(f"joined {len(result.volumes)} volume(s) into {result.output}: {what}, {result.size} bytes, {how}")
    if result.signature is not None:
        say(f"detached signature: {result.signature}")


@app.command()
def receive(
    source: Annotated[
        Path,
        typer.Argument(help="An appliance, a delta, a volume, or a directory (a medium) holding volumes or one file."),
    ],
    to: Annotated[
        Path, typer.Option("--to", help="Directory to receive into (partial copies are kept there to resume).")
    ],
    root: RootOpt = None,
    root_sha256: RootShaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy an appliance or volumes off media and verify them in the same pass; an interrupted receive resumes."""
    from chiron.engines.media.receive import receive as run_receive

    result = run_receive(source, to, root_file=root, root_sha256=root_sha256, show_progress=not as_json)
    _notes(result.notices, result.warnings)
    if as_json:
        emit(result.as_dict())
        return
    _say_received(result.as_dict())


def _say_received(r: dict[str, Any]) -> None:
    app_ = r["appliance"]
    what = f"{app_['name']} {app_['version']}" if app_["name"] else r["file"]
    read = f"{r['received_bytes']} bytes read from {r['source']}"
    if r["resumed_bytes"]:
        read += f", {r['resumed_bytes']} kept from an earlier run and checked again"
    vols = r["volumes"]
    if r["complete"]:
        how = f"verified (anchor: {r['trust_anchor']})" if r["kind"] == "appliance" else "checked (a delta)"
        say(f"received {r['output']}: {what}, {r['size']} bytes, {how}; {read}")
        if r["signature"]:
            say(f"detached signature: {r['signature']}")
        return
    got = ", ".join(map(str, vols["received"])) or "none"
    say(f"received volume(s) {got} of {vols['count']} of {what} into {r['directory']}, each verified; {read}")
    say(f"still missing: volume(s) {', '.join(map(str, vols['missing']))}: receive them the same way")


def _notes(notices: list[str], warnings: list[str]) -> None:
    for notice in notices:
        log("notice", notice)
    for warning in warnings:
        log("warning", warning)
