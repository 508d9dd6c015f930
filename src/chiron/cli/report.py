"""chiron report: one self-contained HTML file of an appliance, for the people who review it."""

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from chiron.cli.app import JsonOpt, app, archive_arg, emit, log, say


@app.command()
def report(
    archive: Annotated[Path | None, typer.Argument(help="The appliance; default: the one running.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
    against: Annotated[
        Path | None, typer.Option("--against", help="An older appliance: the report shows what changed since.")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option("--store", help="The mirror store it came from: its versions and its policy verdict."),
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Trusted root to verify the appliance first.")] = None,
    root_sha256: Annotated[str | None, typer.Option("--root-sha256", help="sha256 of a trusted root.")] = None,
    unverified: Annotated[
        bool,
        typer.Option("--unverified", help="Do not verify (an appliance whose metadata expired); the report says so."),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="The day expiry is measured from, YYYY-MM-DD (default: today, UTC)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write one HTML file (no script, no network) of what an appliance carries and what changed."""
    from chiron.core.text import printable
    from chiron.engines.report import ReportOptions, write_report
    from chiron.errors import UsageError

    day = None
    if as_of is not None:
        try:
            day = date.fromisoformat(as_of)
        except ValueError:
            raise UsageError(f"--as-of: {printable(as_of[:40])} is not a date in the form YYYY-MM-DD") from None
    result = write_report(
        ReportOptions(
            archive=archive_arg(archive, "report"),
            output=output,
            against=against,
            store=store,
            root_file=root,
            root_sha256=root_sha256,
            verify=not unverified,
            as_of=day,
        )
    )
    if as_json:
        emit(result.as_dict())
        return
    a = result.report.appliance
    for notice in a.verification.notices:
        log("notice", notice)
    for warning in a.verification.warnings:
        log("warning", warning)
    if a.warnings:
        log("warning", f"metadata expiring soon (less than the timestamp's half-life left): {', '.join(a.warnings)}")
    how = f"verified (anchor: {a.verification.anchor})" if a.verification.verified else "NOT verified"
    say(f"wrote {result.output} ({result.size} bytes): {a.name} {a.version}, {how}")
