"""Commands for fleet distribution through an OCI registry: publish, pull; and the ``oci://`` source
that install and upgrade accept (cli/host.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chiron.cli.app import JsonOpt, app, emit, log

if TYPE_CHECKING:
    from chiron.sources.oci import Access

AuthfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--authfile",
        help="Registry credentials (a Docker/Podman auth file); default: $REGISTRY_AUTH_FILE, "
        "$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json.",
    ),
]
CaFileOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA certificate(s) the registry's TLS chains to.")]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Allow plain HTTP to a registry that is not on loopback.")
]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", help="Blobs transferred at a time.")]


def access(authfile: Path | None, ca_file: Path | None, insecure: bool) -> Access:
    from chiron.sources.oci import Access

    return Access(authfile=authfile, ca_file=ca_file, insecure=insecure)


@contextlib.contextmanager
def local_appliance(
    archive: str | None,
    prefix: Path,
    state_dir: Path | None,
    authfile: Path | None,
    ca_file: Path | None,
    insecure: bool,
    show_progress: bool,
) -> Iterator[Path | None]:
    """The appliance for install/upgrade as a local file: an ``oci://`` reference is pulled into the
    host's state directory first (and removed afterwards: the release keeps its own copy)."""
    if archive is None or not archive.startswith("oci://"):
        yield Path(archive) if archive is not None else None
        return
    from chiron.engines.oci import pull_for_host

    path = pull_for_host(archive, prefix, state_dir, access(authfile, ca_file, insecure), show_progress=show_progress)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@app.command()
def publish(
    archive: Annotated[Path, typer.Argument(help="The appliance to publish (verified first).")],
    target: Annotated[str, typer.Argument(help="oci://HOST[:PORT]/REPOSITORY[:TAG] (default tag: its version).")],
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Another tag for it (repeatable), e.g. latest.")
    ] = None,
    signature: Annotated[
        Path | None, typer.Option("--signature", help="The detached signature (default: ARCHIVE.sig, if present).")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root metadata to verify it against.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    images: Annotated[str, typer.Option("--images", help="push (as ordinary images too) or skip.")] = "push",
    images_prefix: Annotated[
        str, typer.Option("--images-prefix", help="Repository prefix for the images (default: none).")
    ] = "",
    authfile: AuthfileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    jobs: JobsOpt = 4,
    as_json: JsonOpt = False,
) -> None:
    """Push an appliance into an OCI registry, one blob per member; attach its signature and SBOM."""
    from chiron.engines.oci import PublishOptions
    from chiron.engines.oci import publish as run_publish

    result = run_publish(
        PublishOptions(
            archive=archive,
            target=target,
            access=access(authfile, ca_file, insecure),
            tags=list(tag or []),
            signature=signature,
            root_file=root,
            root_sha256=root_sha256,
            images=images,
            images_prefix=images_prefix,
            jobs=jobs,
            show_progress=not as_json,
        )
    )
    if as_json:
        emit(result.as_dict())
        return
    for notice in result.notices:
        log("notice", notice)
    typer.echo(
        f"published {result.name} {result.version} as {result.reference} ({result.size} bytes in {result.blobs} "
        f"blobs; {result.uploaded_blobs} uploaded, {result.uploaded_bytes} bytes; the rest the registry held)"
    )
    for r in result.referrers:
        typer.echo(f"attached {r['artifact_type']} {r['digest']}")
    for ref in result.images:
        typer.echo(f"image {ref}")


@app.command()
def pull(
    source: Annotated[str, typer.Argument(help="oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:HEX]")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the appliance.")],
    have: Annotated[
        list[Path] | None,
        typer.Option("--have", help="Appliances (files or directories) whose pieces need not be fetched."),
    ] = None,
    staging: Annotated[
        Path | None, typer.Option("--staging", help="Where blobs are downloaded (default: OUTPUT's dir/.chiron-pull).")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root metadata obtained out of band.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of the trusted root.")] = None,
    authfile: AuthfileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    jobs: JobsOpt = 4,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild an appliance byte for byte from a registry, fetching only the blobs not held; verify it.
    Exit 0 pulled and verified, 1 a wrong blob or a failed verification, 3 registry or network problem."""
    from chiron.engines.oci import PullOptions
    from chiron.engines.oci import pull as run_pull

    result = run_pull(
        PullOptions(
            source=source,
            output=output,
            access=access(authfile, ca_file, insecure),
            have=list(have or []),
            staging=staging,
            jobs=jobs,
            root_file=root,
            root_sha256=root_sha256,
            show_progress=not as_json,
        )
    )
    if as_json:
        emit(result.as_dict())
        return
    for notice in result.notices:
        log("notice", notice)
    typer.echo(
        f"pulled {result.name} {result.version} ({result.digest}) to {result.output}: {result.size} bytes, "
        f"{result.fetched_bytes} fetched, {result.resumed_bytes} resumed, {result.reused_bytes} reused from "
        f"appliances held here; verified (anchor: {result.trust_anchor})"
    )
    if result.signature:
        typer.echo(f"signature: {result.signature}")
