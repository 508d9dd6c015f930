"""``chiron serve``: run the site service, and manage its tokens, hosts and receipts (docs/serve.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from chiron.cli.app import JsonOpt, app, emit, log
from chiron.errors import Refused, UsageError, VerificationError

serve_app = typer.Typer(
    help="The site service: package index, appliances and deltas, receipts, refresh jobs (docs/serve.md).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(serve_app, name="serve")
token_app = typer.Typer(help="API tokens: shown once, stored as hashes.", no_args_is_help=True)
serve_app.add_typer(token_app, name="token")
hosts_app = typer.Typer(help="Hosts that send receipts: approve their keys, see the fleet.", no_args_is_help=True)
serve_app.add_typer(hosts_app, name="hosts")
receipts_app = typer.Typer(help="Receipts carried out of the enclave on media.", no_args_is_help=True)
serve_app.add_typer(receipts_app, name="receipts")

DEFAULT_DB = Path(os.environ.get("CHIRON_SERVE_DB", "/var/lib/chiron-serve/serve.db"))
DbOpt = Annotated[Path, typer.Option("--db", help="The service database (default: $CHIRON_SERVE_DB).")]
_INTERVAL = re.compile(r"^(\d+)([smhd])$")


def interval(text: str, option: str) -> float:
    """Seconds in ``90s``, ``15m``, ``6h`` or ``1d``."""
    m = _INTERVAL.match(text.strip())
    if m is None or int(m.group(1)) <= 0:
        raise UsageError(f"{option}: '{text}' is not a duration like 90s, 15m, 6h or 1d")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# Long only by its typer option declarations (one per option); the body maps them to Settings and Listen.
@serve_app.callback()
def serve(
    ctx: typer.Context,
    store: Annotated[
        Path | None, typer.Option("--store", help="A mirror store: serve its appliances, run jobs.")
    ] = None,
    appliances: Annotated[Path | None, typer.Option("--appliances", help="A directory of appliance files.")] = None,
    prefix: Annotated[Path | None, typer.Option("--prefix", help="A host prefix: serve its releases.")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="That host's state (PREFIX/state).")] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify what is served.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The appliance /simple/ stands for.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8443,
    certfile: Annotated[Path | None, typer.Option("--certfile", help="TLS certificate (PEM).")] = None,
    keyfile: Annotated[Path | None, typer.Option("--keyfile", help="TLS private key (PEM).")] = None,
    db: DbOpt = DEFAULT_DB,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Deltas (default: beside --db).")] = None,
    anonymous_read: Annotated[
        bool, typer.Option("--anonymous-read", help="Index, files and appliances without a token.")
    ] = False,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help="/metrics without a token.")] = False,
    x_accel_redirect: Annotated[
        str | None, typer.Option("--x-accel-redirect", help="nginx internal location prefix, e.g. /_chiron/.")
    ] = None,
    refresh_every: Annotated[
        str | None, typer.Option("--refresh-every", help="Run a refresh job this often, e.g. 6h (needs --store).")
    ] = None,
    tool_wheels: Annotated[
        Path | None, typer.Option("--tool-wheels", help="chiron's wheels, for refresh jobs ($CHIRON_TOOL_WHEELS).")
    ] = None,
    shutdown_timeout: Annotated[
        float, typer.Option("--shutdown-timeout", help="Seconds running downloads get after SIGTERM.")
    ] = 30.0,
    rescan_every: Annotated[float, typer.Option("--rescan-every", help="Seconds between looks for new files.")] = 10.0,
    access_log: Annotated[
        Path | None, typer.Option("--access-log", help="Append the JSON access log here (default: stderr).")
    ] = None,
) -> None:
    """Run the service until SIGTERM (the subcommands manage its database)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from chiron.service.server import Listen
        from chiron.service.server import serve as run_server
        from chiron.service.settings import Settings
    except ImportError as exc:
        from chiron.errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"chiron serve needs the serve extra ({exc.name} is missing)", hint="pip install 'chiron[serve]'"
        ) from None
    if not (store or appliances or prefix):
        raise UsageError("give what to serve: --store DIR, --appliances DIR and/or --prefix DIR")
    for option, path in (("--store", store), ("--appliances", appliances), ("--prefix", prefix)):
        if path is not None and not path.is_dir():
            raise UsageError(f"{option} {path}: no such directory")
    if root is not None and not root.is_file():
        raise UsageError(f"--root {root}: no such file")
    if refresh_every and store is None:
        raise UsageError("--refresh-every runs refresh jobs on a store: give --store too")
    if x_accel_redirect is not None and not (x_accel_redirect.startswith("/") and x_accel_redirect.endswith("/")):
        raise UsageError(f"--x-accel-redirect: '{x_accel_redirect}' must start and end with / (e.g. /_chiron/)")
    settings = Settings(
        db=db.absolute(),
        cache_dir=(cache_dir or db.parent / "cache").absolute(),
        store=store,
        appliances=appliances,
        prefix=prefix,
        state_dir=state_dir,
        root_file=root,
        root_sha256=root_sha256,
        name=name,
        anonymous_read=anonymous_read,
        public_metrics=public_metrics,
        x_accel_redirect=x_accel_redirect,
        refresh_every=interval(refresh_every, "--refresh-every") if refresh_every else None,
        tool_wheels=tool_wheels,
        rescan_every=rescan_every,
        access_log=access_log,
    )
    listen = Listen(host=host, port=port, certfile=certfile, keyfile=keyfile, shutdown_timeout=shutdown_timeout)
    scheme = "https" if certfile else "http"
    run_server(
        settings,
        listen,
        lambda: log("notice", f"chiron serve on {scheme}://{host}:{port}/ (database {settings.db}); stop with SIGTERM"),
    )


def _db(path: Path) -> Any:
    from chiron.service.db import Database

    return Database(path)


# ---------------------------------------------------------------- tokens


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Option("--name", help="Who or what uses it, e.g. host-17 or ci.")],
    scope: Annotated[list[str], typer.Option("--scope", help="read, report or admin; repeat for more.")],
    db: DbOpt = DEFAULT_DB,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Valid for, e.g. 90d (default: until revoked).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a token and print it ONCE (only its hash is stored)."""
    from datetime import UTC, datetime, timedelta

    from chiron.service import tokens

    try:
        scopes = tokens.check_scopes(scope)
    except ValueError as exc:
        raise UsageError(f"--scope: {exc}") from None
    if not name.strip() or len(name) > 200:
        raise UsageError("--name: give a short name (at most 200 characters)")
    until = None
    if expires:
        until = (datetime.now(UTC) + timedelta(seconds=interval(expires, "--expires"))).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = tokens.new_token()
    _db(db).add_token(made.id, made.secret_sha256, name.strip(), scopes, until)
    doc = _token_doc({"id": made.id, "name": name.strip(), "scopes": scopes, "expires": until}, made.text)
    if as_json:
        emit(doc)
        return
    typer.echo(made.text)
    log("notice", f"token {made.id} ({name}, {' '.join(scopes)}): shown once; store it now")


@token_app.command("list")
def token_list(db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Tokens by id, name, scopes, expiry, revocation and last use (never the tokens themselves)."""
    rows = _db(db).tokens()
    if as_json:
        emit({"schema": "chiron.serve-tokens/1", "db": str(db), "tokens": rows})
        return
    for t in rows:
        state = f"revoked {t['revoked']}" if t["revoked"] else (f"expires {t['expires']}" if t["expires"] else "valid")
        used = t["last_used"] or "never"
        typer.echo(f"{t['id']}  {t['name']:<24} {' '.join(t['scopes']):<18} {state:<30} last used {used}")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="The token's id.")], db: DbOpt = DEFAULT_DB) -> None:
    """Revoke a token at once."""
    database = _db(db)
    if not database.revoke_token(token_id):
        known = any(t["id"] == token_id for t in database.tokens())
        raise UsageError(f"token {token_id}: {'already revoked' if known else 'no such token'} in {db}")
    typer.echo(f"revoked {token_id}")


def _token_doc(row: dict[str, Any], text: str | None) -> dict[str, Any]:
    return {"schema": "chiron.serve-token/1", **row, "token": text}


# ---------------------------------------------------------------- hosts and receipts


def _problem_error(exc: Any) -> Exception:
    """A service refusal as a CLI error: 403/409 refused (exit 4), bad signature failed (exit 1)."""
    if exc.slug == "bad-signature":
        return VerificationError([exc.detail])
    if exc.status in (403, 409):
        return Refused(exc.detail)
    return UsageError(exc.detail)


@hosts_app.command("approve")
def hosts_approve(
    host: Annotated[str, typer.Argument(help="The host id.")],
    key_sha256: Annotated[
        str | None,
        typer.Option("--key-sha256", help="The key fingerprint, checked out of band (chiron receipt --show-key)."),
    ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Approve a host's key: its receipts are accepted from now on."""
    from chiron.service import site
    from chiron.service.problems import ProblemError

    if key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", key_sha256):
        raise UsageError(f"--key-sha256: '{key_sha256}' is not 64 lower-case hexadecimal digits")
    try:
        done = site.approve(_db(db), host, key_sha256, f"cli ({os.environ.get('USER', 'unknown')})")
    except ProblemError as exc:
        raise _problem_error(exc) from None
    typer.echo(f"approved {done['host']} (key sha256 {done['key_sha256']})")


@hosts_app.command("revoke")
def hosts_revoke(host: Annotated[str, typer.Argument(help="The host id.")], db: DbOpt = DEFAULT_DB) -> None:
    """Stop accepting a host's receipts (its history stays)."""
    from chiron.service import site
    from chiron.service.problems import ProblemError

    try:
        site.revoke(_db(db), host)
    except ProblemError as exc:
        raise _problem_error(exc) from None
    typer.echo(f"revoked {host}")


@hosts_app.command("list")
def hosts_list(
    db: DbOpt = DEFAULT_DB,
    store: Annotated[Path | None, typer.Option("--store", help="Compare with the store's newest version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The fleet from the newest receipt of each host: failed first, then hosts behind."""
    from chiron.engines.fleet import Newest, fleet_view

    newest: dict[str, Newest] = {}
    if store is not None:
        from chiron.engines.mirror import status as store_status

        latest = store_status(store)["latest"]
        name = store_status(store)["name"]
        newest[name] = Newest(name, str(latest["version"]), int(latest["metadata_version"]))
    view = fleet_view(_db(db).hosts(), newest)
    if as_json:
        emit({"schema": "chiron.fleet/1", **view})
        return
    s = view["summary"]
    typer.echo(
        f"{s['hosts']} hosts: {s['approved']} approved, {s['pending']} pending, {s['behind']} behind, "
        f"{s['failed']} failed, {s['silent']} silent"
    )
    for h in view["hosts"]:
        app_ = h["appliance"] or {}
        running = f"{app_.get('name')} {app_.get('version')} (targets v{h['targets_version']})" if app_ else "-"
        flags = " ".join(
            f for f, on in (("BEHIND", h["behind"]), ("FAILED", h["failed"]), ("SILENT", h["silent"])) if on
        )
        typer.echo(f"{h['host']:<24} {h['state']:<9} {running:<40} last seen {h['last_seen'] or 'never'} {flags}")


@receipts_app.command("import")
def receipts_import(
    files: Annotated[list[Path], typer.Argument(help="Receipt files (chiron receipt -o), in any order.")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Accept receipts carried on media, oldest first; each is checked as if it came over the network."""
    from chiron.engines.receipts import read_receipt
    from chiron.service import site
    from chiron.service.problems import ProblemError

    docs = sorted((read_receipt(f) for f in files), key=lambda d: (d["host"], d["seq"]))
    database = _db(db)
    refused = 0
    for doc in docs:
        try:
            site.accept_receipt(database, doc, "media", {})
            typer.echo(f"accepted receipt {doc['seq']} from {doc['host']}")
        except ProblemError as exc:
            refused += 1
            log("error", f"receipt {doc['seq']} from {doc['host']}: {exc.detail}")
    if refused:
        raise Refused(f"{refused} of {len(docs)} receipt(s) refused (see above); the others were accepted")


@serve_app.command("openapi")
def openapi(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it here (default: stdout).")] = None,
) -> None:
    """Print the service's OpenAPI schema (what docs/openapi.json holds)."""
    from chiron.service.openapi import schema_text

    text = schema_text()
    if output is None:
        typer.echo(text, nl=False)
    else:
        from chiron.core.fs import write_atomic

        write_atomic(output, text.encode())
