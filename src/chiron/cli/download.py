"""Client commands for a chiron serve: ``chiron download`` (resumable) and ``chiron receipt``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from chiron.cli.app import CaOpt, JsonOpt, PrefixOpt, StateOpt, TokenOpt, app, client, emit, log, setting


@app.command()
def download(
    url: Annotated[str, typer.Argument(help="What to download, e.g. https://SERVER/appliances/latest.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")],
    token: TokenOpt = None,
    cacert: CaOpt = None,
    signature: Annotated[
        bool, typer.Option(help="Also fetch URL.sig, the detached signature, if there is one.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Download an appliance or delta, resuming an interrupted download; verify it afterwards as any file."""
    from chiron.engines.download import download as run_download

    result = run_download(url, output, client(token, cacert), signature=signature, show_progress=not as_json)
    if as_json:
        emit(result.as_dict())
        return
    how = "resumed" if result.resumed else "downloaded"
    typer.echo(f"{how} {result.output} ({result.size} bytes, sha256 {result.sha256}) from {result.url}")
    if result.signature:
        typer.echo(f"signature: {result.signature}")
    log("notice", f"nothing is trusted yet: chiron verify {result.output} --root-sha256 HEX (or upgrade with it)")


@app.command()
def receipt(
    prefix: PrefixOpt = Path("/opt/chiron"),
    state_dir: StateOpt = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Send it to this chiron serve (https://SERVER/).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it to this file (for media).")] = None,
    host_id: Annotated[
        str | None, typer.Option("--host-id", help="This host's id, the first time (default: its hostname).")
    ] = None,
    show_key: Annotated[bool, typer.Option("--show-key", help="Print the host id and key fingerprint only.")] = False,
    token: TokenOpt = None,
    cacert: CaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A signed receipt of what this host runs, sent to a server or written for media (the host's key is
    made the first time). Exit 4 when the server refuses it (the host must be approved first)."""
    from chiron.engines import receipts
    from chiron.engines.host import Paths
    from chiron.errors import UsageError

    # --prefix and --state-dir as given, else from the settings ([host]), as the host commands do.
    prefix, state_dir = setting("host.prefix", prefix), setting("host.state_dir", state_dir)

    if show_key:
        ident = receipts.ensure_identity(Paths.make(prefix, state_dir).state, host_id)
        typer.echo(f"{ident.host} key sha256 {ident.key_sha256}")
        return
    if server is None and output is None:
        raise UsageError("give --server URL (send it) and/or -o FILE (write it for media)")
    doc = receipts.make_receipt(prefix, state_dir, host_id)
    if output is not None:
        receipts.write_receipt(doc, output)
    if server is not None:
        _send(doc, server, client(token, cacert))
    if as_json:
        emit(doc)
    elif output is not None:
        typer.echo(f"wrote receipt {doc['seq']} of {doc['host']} to {output}")


def _send(doc: dict[str, Any], server: str, http: Any) -> None:
    """POST the receipt; an unknown host asks to be enrolled and is told to wait for an admin."""
    from urllib.parse import urljoin

    from chiron.errors import Refused
    from chiron.sources import http as _http

    base = server if server.endswith("/") else server + "/"
    try:
        _status, _h, answer = _http.request(
            urljoin(base, "v1/receipts"), "receipt", method="POST", body=doc, client=http
        )
    except Refused as exc:
        if "is not enrolled" not in exc.message:
            raise
        _s, _h, enrolled = _http.request(
            urljoin(base, "v1/enrolments"), "enrolment", method="POST", body=doc, client=http
        )
        raise Refused(
            f"{doc['host']} is not approved on {base} yet: enrolment sent (state {enrolled.get('state')})",
            hint=f"an admin approves it: chiron serve hosts approve {doc['host']} --key-sha256 {doc['key_sha256']}",
        ) from None
    behind = " (a newer release is served)" if answer.get("behind") else ""
    log("notice", f"receipt {doc['seq']} of {doc['host']} accepted by {base}{behind}")
