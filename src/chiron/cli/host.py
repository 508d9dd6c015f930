"""Commands on an air-gapped host: install, upgrade, recover, commit, rollback, status, doctor, audit, inventory."""

from pathlib import Path
from typing import Annotated, Any

import typer

from chiron.cli.app import (
    ImagesOpt,
    InstallerOpt,
    JsonOpt,
    PrefixOpt,
    RegistryOpt,
    StateOpt,
    TokenOpt,
    WaitOpt,
    app,
    archive_arg,
    audit_app,
    client,
    emit,
    host_paths,
    log,
    say,
    setting,
    state,
)
from chiron.cli.oci import AuthfileOpt, CaFileOpt, InsecureOpt, local_appliance
from chiron.core.runtime import self_archive
from chiron.errors import ExitCode


def _host_opts(archive: Path | None, command: str, prefix: Path, **kw: Any) -> Any:
    from chiron.engines.host import InstallOptions
    from chiron.errors import UsageError

    for key in ("installer", "images", "registry", "wait"):
        if key in kw:
            kw[key] = setting(f"host.{key}", kw[key])

    if kw.get("installer") not in ("auto", "uv", "pip"):
        raise UsageError(f"--installer: '{kw.get('installer')}' is not auto, uv or pip")
    if kw.get("images", "load") not in ("load", "push", "skip"):
        raise UsageError(f"--images: '{kw.get('images')}' is not load, push or skip")
    if (kw.get("images") == "push") != bool(kw.get("registry")):
        raise UsageError("--images push and --registry HOST[:PORT][/PREFIX] go together")
    return InstallOptions(archive=archive_arg(archive, command).absolute(), prefix=prefix, **kw)


def _print_host_result(result: Any, as_json: bool, prefix: Path | None = None) -> None:
    if as_json:
        emit(result.as_dict())
        return
    for notice in result.notices:
        log("notice", notice)
    if not result.changed:
        say(f"already installed: {result.name} {result.version} is the live release {result.release}")
        return
    verb = {"install": "installed", "upgrade": "upgraded to", "rollback": "rolled back to"}[result.op]
    say(f"{verb} {result.name} {result.version} (release {result.release}, environment {result.environment})")
    if result.previous:
        say(f"previous release kept: {result.previous}")
    trial = result.trial
    if trial and trial["last_check"]:
        check = trial["last_check"]
        verdict = "passed" if check["ok"] else "FAILED"
        say(f"live check {verdict} ({check['attempts']} attempt(s)): {check['output']}")
    if trial and trial["phase"] == "on-trial":
        say(
            f"on trial until {trial['deadline']}: confirm with 'chiron commit --prefix {prefix}'; "
            "without it the next chiron operation after that time reverts it"
        )
    elif trial and trial["phase"] == "committed":
        say(f"committed: {result.release} passed its trial")


@app.command()
def install(
    archive: Annotated[
        str | None, typer.Argument(help="Appliance to install (a file or oci://...); default: the one running.")
    ] = None,
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root metadata obtained out of band.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of the trusted root.")] = None,
    trust_on_first_use: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use", help="Trust the archive's own root (no --root/--root-sha256): pins the host to it."
        ),
    ] = False,
    installer: InstallerOpt = None,
    images: ImagesOpt = None,
    registry: RegistryOpt = None,
    wait: WaitOpt = None,
    authfile: AuthfileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """First install on a host: verify, then create the release offline and switch to it."""
    from chiron.engines.host import install as run_install

    prefix, state_dir = host_paths(prefix, state_dir)
    with local_appliance(archive, prefix, state_dir, authfile, ca_file, insecure, not as_json) as local:
        opts = _host_opts(
            local,
            "install",
            prefix,
            state_dir=state_dir,
            root_file=root,
            root_sha256=root_sha256,
            trust_on_first_use=trust_on_first_use,
            installer=installer,
            images=images,
            registry=registry,
            wait=wait,
            show_progress=not as_json,
        )
        result = run_install(opts)
    _print_host_result(result, as_json)


# Long by its typer option declarations and the three sources it takes (file, oci://, https://).
@app.command()
def upgrade(
    archive: Annotated[
        str | None,
        typer.Argument(
            help="The newer appliance or delta: a file, oci://..., or a URL (https://SERVER/ asks a chiron serve "
            "for the delta this host needs); default: the one running."
        ),
    ] = None,
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    allow_downgrade: Annotated[
        bool, typer.Option("--allow-downgrade", help="Install an older release deliberately (logged).")
    ] = False,
    installer: InstallerOpt = None,
    images: ImagesOpt = None,
    registry: RegistryOpt = None,
    trial_until: Annotated[
        str | None,
        typer.Option("--trial-until", help="Leave the new release on trial this long (30m, 2h) for 'chiron commit'."),
    ] = None,
    wait: WaitOpt = None,
    authfile: AuthfileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify against the host's trusted metadata, install beside the current release, health-check, switch."""
    from chiron.engines.host import parse_until
    from chiron.engines.host import upgrade as run_upgrade

    prefix, state_dir = host_paths(prefix, state_dir)
    installer, images = setting("host.installer", installer), setting("host.images", images)
    registry, wait = setting("host.registry", registry), setting("host.wait", wait)
    if archive is not None and archive.startswith(("http://", "https://")):  # a chiron serve, or any HTTP server
        from chiron.engines.download import for_upgrade

        # Downloaded (resumably) into the state directory, then upgraded from as a file: verified like one.
        archive = str(for_upgrade(archive, prefix, state_dir, client(token, ca_file)))
    # An oci:// appliance is pulled first (transport only); whichever tool runs the upgrade verifies it.
    with local_appliance(archive, prefix, state_dir, authfile, ca_file, insecure, not as_json) as local:
        target = archive_arg(local, "upgrade").absolute()
        until = parse_until(trial_until) if trial_until is not None else None
        from chiron.engines.host.handover import hand_over_to_installed

        hand_over_to_installed(
            prefix,
            target,
            state_dir,
            allow_downgrade,
            installer,
            wait,
            as_json,
            lambda m: log("notice", m),
            images,
            registry,
            state["global_args"],
            trial_until,
        )
        opts = _host_opts(
            local,
            "upgrade",
            prefix,
            state_dir=state_dir,
            allow_downgrade=allow_downgrade,
            installer=installer,
            images=images,
            registry=registry,
            wait=wait,
            show_progress=not as_json,
            trial_until=until,
        )
        result = run_upgrade(opts)
    _print_host_result(result, as_json, prefix)


@app.command()
def recover(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Finish or undo an interrupted install/upgrade, and nothing else."""
    from chiron.engines.host import recover_only

    prefix, state_dir = host_paths(prefix, state_dir)
    wait = setting("host.wait", wait)
    outcome = recover_only(prefix, state_dir, wait)
    if as_json:
        emit({"schema": "chiron.recover/1", "prefix": str(prefix), "outcome": outcome})
    else:
        say(outcome or "nothing to recover")


@app.command()
def commit(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Confirm the release on trial (after 'upgrade --trial-until'); logged."""
    from chiron.engines.host import commit_release

    prefix, state_dir = host_paths(prefix, state_dir)
    info = commit_release(prefix, state_dir, setting("host.wait", wait))
    if as_json:
        emit(info)
        return
    if info["recovered"]:
        say(info["recovered"])
    say(f"committed release {info['release']} (previous release kept: {info['previous'] or '-'})")


@app.command()
def rollback(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch back to the previous release (logged)."""
    from chiron.engines.host import rollback as run_rollback

    prefix, state_dir = host_paths(prefix, state_dir)
    wait = setting("host.wait", wait)
    _print_host_result(run_rollback(prefix, state_dir, wait), as_json)


@app.command()
def status(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    show_packages: Annotated[
        bool, typer.Option("--packages", help="List the packages installed in the current release.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Releases, the current one and its packages, trusted metadata and expiry, root fingerprint, last operations."""
    from chiron.engines.host import status as run_status

    prefix, state_dir = host_paths(prefix, state_dir)
    info = run_status(prefix, state_dir)
    if as_json:
        emit(info)
        return
    cur = info["current"]
    say(f"prefix {info['prefix']} (state {info['state_dir']})")
    if cur:
        say(f"current: {cur['name']} {cur['version']} (release {cur['release']}, installed {cur['installed']})")
    say(f"previous: {info['previous'] or '-'}")
    if cur:
        say(f"packages: {len(info['packages'])} installed" + ("" if show_packages else " (list them with --packages)"))
        for pkg in info["packages"] if show_packages else ():
            say(f"  {pkg['name']} {pkg['version']}")
    for role, m in info["metadata"].items():
        say(f"trusted {role:<10} v{m['version']:<12} expires {m['expires']}")
    if info["root_fingerprint"]:
        say(f"root fingerprint: {info['root_fingerprint']} (sha256 of the trusted root; --root-sha256 for other hosts)")
    if info["pending_transaction"]:
        say(f"pending transaction: {info['pending_transaction']['op']} {info['pending_transaction']['id']}")
    _print_trial(info["trial"])
    for w in info["warnings"]:
        say(f"warning: {w}")
    say("last operations:")
    for op in info["last_operations"]:
        say(f"  {op['time']} {op['user']:<8} {op['op']:<9} {op['result']:<8} {op.get('release') or ''}")


def _print_trial(trial: dict[str, Any] | None) -> None:
    if not trial:
        return
    if trial["phase"] in ("on-trial", "reverting"):
        waits = "waiting for 'chiron commit'" if trial["external"] else f"run by pid {trial['pid']}"
        say(
            f"trial: release {trial['release']} {trial['phase']} since {trial['since']}, "
            f"until {trial['deadline']} ({waits})"
        )
    else:
        why = f": {trial['reason']}" if trial["reason"] else ""
        say(f"last trial: release {trial['release']} {trial['phase']} at {trial['ended']}{why}")
    check = trial["last_check"]
    if check:
        verdict = "passed" if check["ok"] else "failed"
        say(f"last live check: {verdict} at {check['time']} ({check['attempts']} attempt(s)): {check['output']}")


@app.command()
def doctor(
    archive: Annotated[
        Path | None, typer.Argument(help="The appliance to prepare for; default: the one running.")
    ] = None,
    prefix: Annotated[Path | None, typer.Option("--prefix", help="Where it will be installed.")] = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this host can do the next operation; print what is missing and the fix. Exit 0 ready, 3 not."""
    from chiron.engines.doctor import doctor as run_doctor

    # No --prefix: the host checks run only where the settings name a prefix ([host] prefix).
    prefix = setting("host.prefix", prefix, only_if_set=True)
    state_dir = setting("host.state_dir", state_dir)
    checks = run_doctor(archive or self_archive(), prefix, state_dir)
    failed = [c for c in checks if not c.ok and c.severity == "error"]
    if as_json:
        emit({"schema": "chiron.doctor/1", "ok": not failed, "checks": [c.as_dict() for c in checks]})
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.severity == "error" else "warn")
            say(f"{mark} {c.name:<18} {c.detail}" + (f"\n     fix: {c.fix}" if not c.ok and c.fix else ""))
        say("ready" if not failed else f"not ready: {len(failed)} problem(s)")
    raise typer.Exit(ExitCode.OK if not failed else ExitCode.ENVIRONMENT)


@audit_app.command("verify")
def audit_verify(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that no audit entry was edited, inserted or removed. Exit 0 intact, 1 tampered."""
    from chiron.engines.host import audit_verify as run_audit_verify

    prefix, state_dir = host_paths(prefix, state_dir)
    report = run_audit_verify(prefix, state_dir)
    if as_json:
        emit(report.as_dict())
    else:
        for n in report.notices:
            log("notice", n)
        if report.ok:
            say(f"audit log intact: {report.entries} entries, chain and head agree ({report.path})")
        else:
            say(f"chiron: audit log TAMPERED or damaged: {report.path}", err=True)
            for problem in report.problems:
                say(f"  - {problem}", err=True)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.VERIFY_FAILED)


@app.command()
def inventory(
    prefix: PrefixOpt = None,
    state_dir: StateOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the inventory to this file.")] = None,
) -> None:
    """List what this host holds (by sha256), for a mirror to make a delta that fits it."""
    from chiron.archive.delta import write_inventory
    from chiron.engines.host import inventory as run_inventory

    prefix, state_dir = host_paths(prefix, state_dir)
    info = run_inventory(prefix, state_dir)
    if output is None:
        emit(info)
    else:
        write_inventory(info, output)
        say(f"wrote {output}: {len(info['content'])} pieces from {len(info['releases'])} release(s)")
