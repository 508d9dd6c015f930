"""Commands for the mirror store: mirror refresh / restore / init / status / prune."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from chiron.cli.app import (
    JsonOpt,
    StoreOpt,
    archive_arg,
    emit,
    log,
    mirror_app,
    say,
    setting,
)
from chiron.cli.oci import AuthfileOpt, CaFileOpt, InsecureOpt, access

if TYPE_CHECKING:
    from chiron.sources.tool import ToolFormat


# Long only by its typer option declarations (one per option); the body maps them to RefreshOptions.
@mirror_app.command("refresh")
def mirror_refresh(
    spec: Annotated[
        Path | None, typer.Argument(help="The appliance spec (default: the one the store was last refreshed from).")
    ] = None,
    store: StoreOpt = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy file (default: policy.toml beside the spec, if any).")
    ] = None,
    delta_from: Annotated[
        Path | None,
        typer.Option("--delta-from", help="Also write a delta against this older appliance or host inventory."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Build and sign a new version even if nothing changed.")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="Tool zip format: pex or shiv.")] = "pex",
    tool_wheels: Annotated[
        Path | None,
        typer.Option(
            help="Wheels of chiron and its dependencies (default: $CHIRON_TOOL_WHEELS, else the tool of the "
            "store's newest appliance is signed again)."
        ),
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", help="Folder the spec's relative paths resolve against.")
    ] = None,
    source_date_epoch: Annotated[
        int | None, typer.Option(help="Build time in seconds since 1970 (default: $SOURCE_DATE_EPOCH).")
    ] = None,
    publish_to: Annotated[
        str | None,
        typer.Option("--publish", help="Then publish the newest appliance to oci://HOST/REPO (tag: VERSION-N)."),
    ] = None,
    publish_tag: Annotated[
        list[str] | None, typer.Option("--publish-tag", help="Another tag to publish it under, e.g. latest.")
    ] = None,
    authfile: AuthfileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-resolve the spec, fetch only what the store lacks, apply the policy, sign version N+1 if anything
    changed. Exit 0 built or up to date, 4 policy violation, 3 upstream or disk problem."""
    import os

    from chiron.engines.diff import render
    from chiron.engines.mirror import RefreshOptions, refresh
    from chiron.errors import UsageError

    if fmt not in ("pex", "shiv"):
        raise UsageError(f"--format: '{fmt}' is not pex or shiv")
    env_wheels = os.environ.get("CHIRON_TOOL_WHEELS")
    result = refresh(
        RefreshOptions(
            store=setting("mirror.store", store),
            spec=spec,
            tool_wheels=tool_wheels or (Path(env_wheels) if env_wheels else None),
            base_dir=base,
            tool_format=cast("ToolFormat", fmt),
            policy=policy,
            delta_from=delta_from,
            force=force,
            source_date_epoch=source_date_epoch,
            show_progress=not as_json,
        )
    )
    for warning in result.warnings:
        log("warning", warning)
    published = None
    if publish_to is not None and result.appliance is not None:
        # Every run publishes the newest appliance, built now or not: a publish that failed last time is
        # made up, and one that already happened costs a few HEAD requests (the registry has every blob).
        from chiron.engines.oci import PublishOptions, publish, tag_for

        published = publish(
            PublishOptions(
                archive=result.appliance,
                target=publish_to,
                access=access(authfile, ca_file, insecure),
                tags=list(publish_tag or []),
                # Refreshed versions are SPEC+N ('+' is not allowed in a tag): the tag is SPEC-N.
                default_tag=tag_for(f"{result.version.partition('+')[0]}-{result.metadata_version}"),
                show_progress=not as_json,
            )
        )
    if as_json:
        emit({**result.as_dict(), **({"published": published.as_dict()} if published else {})})
        return
    if published is not None:
        say(f"published {published.reference} ({published.uploaded_bytes} bytes uploaded)")
    for note in result.notes if result.changed else result.notes[1:]:
        log("notice", note)
    if not result.changed:
        say(
            f"up to date: nothing new upstream ({result.downloaded} artifacts downloaded); "
            f"{result.name} {result.version} metadata version {result.metadata_version} stays the newest: "
            f"{result.appliance}"
        )
    else:
        say(
            f"built {result.appliance} ({result.name} {result.version}, metadata version "
            f"{result.metadata_version}, {result.size} bytes; {result.downloaded} artifacts downloaded, "
            f"{result.bytes_downloaded} bytes, {result.reused} from the store)"
        )
    if result.delta:
        say(f"delta: {result.delta} ({result.delta_size} bytes)")
    _roots(result.root)
    if result.changelog:
        say(render(result.changelog))


def _roots(info: dict[str, Any]) -> None:
    """The fingerprints to publish out of band (verify --root-sha256, install --root-sha256)."""
    if info.get("root_fingerprint"):
        say(f"root fingerprint: {info['root_fingerprint']}")
        newest = info["newest_root"]
        if newest["version"] > 1:
            say(f"newest root (version {newest['version']}): {newest['sha256']}")


@mirror_app.command("restore")
def mirror_restore(
    archive: Annotated[Path, typer.Argument(help="The latest appliance (it carries the store's content).")],
    store: StoreOpt = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="The spec to refresh from (default: the copy the appliance carries).")
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", help="Folder the spec's relative key paths resolve against.")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the appliance.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild a mirror store from a verified appliance; the next refresh signs version N+1 with the same keys."""
    from chiron.engines.mirror import restore

    store = setting("mirror.store", store)
    info = restore(archive, store, spec=spec, base=base, root_file=root, root_sha256=root_sha256)
    if as_json:
        emit(info)
        return
    for notice in info["notices"]:
        log("notice", notice)
    say(
        f"restored {info['store']} from {archive}: {info['name']} {info['version']} metadata version "
        f"{info['metadata_version']} ({info['wheels']} wheels, {info['image_blobs']} image blobs); "
        f"the next refresh signs version {info['next_version']} with spec {info['spec']}"
    )
    for role, uris in sorted(info["keys"].items()):
        say(f"  {role}: {', '.join(uris)}")
    _roots(info)


@mirror_app.command("init")
def mirror_init(
    archive: Annotated[
        Path | None, typer.Argument(help="The appliance to set the store up from (default: the one running).")
    ] = None,
    store: StoreOpt = None,
    base: Annotated[
        Path | None,
        typer.Option("--base", help="Folder the appliance spec's relative key paths resolve against."),
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the appliance.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set up a mirror host's store from an appliance (./chiron.pex mirror init --store DIR): its spec, lock,
    root chain, wheels and images; 'mirror refresh --store DIR' then runs, signing the same tool again."""
    from chiron.engines.mirror import init

    given = archive_arg(archive, "mirror init")
    info = init(given, setting("mirror.store", store), base=base, root_file=root, root_sha256=root_sha256)
    if as_json:
        emit(info)
        return
    for notice in info["notices"]:
        log("notice", notice)
    say(
        f"set up {info['store']} from {given}: {info['name']} {info['version']} metadata version "
        f"{info['metadata_version']} ({info['wheels']} wheels, {info['image_blobs']} image blobs), spec {info['spec']}"
    )
    for role, uris in sorted(info["keys"].items()):
        say(f"  {role}: {', '.join(uris)}")
    _roots(info)
    say(f"next: chiron mirror refresh --store {info['store']}")


@mirror_app.command("status")
def mirror_status(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """What a store holds: versions built, the latest appliance, artifacts on disk."""
    from chiron.engines.mirror import status as run_status

    info = run_status(setting("mirror.store", store))
    if as_json:
        emit(info)
        return
    latest = info["latest"]
    say(f"store {info['store']}: {info['name']} (spec {info['spec']})")
    say(f"latest: metadata version {latest['metadata_version']}, {latest['version']}, {latest['file']}")
    say(f"versions: {', '.join(str(v) for v in info['versions'])}")
    say(
        f"artifacts: {info['artifacts']} ({info['artifact_bytes']} bytes); "
        f"image blobs: {info['image_blobs']} ({info['image_bytes']} bytes)"
    )
    _roots(info)


@mirror_app.command("prune")
def mirror_prune(
    store: StoreOpt = None,
    keep: Annotated[int, typer.Option("--keep", help="How many of the newest appliances to keep.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Remove older appliances and the artifacts and image blobs only they used (the lock history stays)."""
    from chiron.engines.mirror import prune

    info = prune(setting("mirror.store", store), keep)
    if as_json:
        emit(info)
        return
    say(
        f"pruned {len(info['pruned'])} version(s) from {info['store']}; kept {', '.join(map(str, info['kept']))}; "
        f"{info['files_removed']} artifacts and blobs removed, {info['bytes_freed']} bytes freed"
    )
