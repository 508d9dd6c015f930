"""Commands for signing keys: sign, keys status / new-root / rotate / init."""

from pathlib import Path
from typing import Annotated, Any

import typer

from chiron.cli.app import (
    JsonOpt,
    app,
    emit,
    keys_app,
    say,
)
from chiron.errors import ExitCode


def _role_pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    from chiron.errors import UsageError

    out = []
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or role not in ("root", "targets", "snapshot", "timestamp") or not value:
            raise UsageError(f"{what}: '{item}' is not ROLE=VALUE with ROLE one of root, targets, snapshot, timestamp")
        out.append((role, value))
    return out


def _print_status(path: Path, status: Any, as_json: bool) -> None:
    if as_json:
        emit(
            {
                "schema": "chiron.root-status/1",
                "file": str(path),
                "version": status.version,
                "complete": status.complete,
                "thresholds": {k: {"signed": v[0], "threshold": v[1]} for k, v in status.thresholds.items()},
                "missing": status.missing,
            }
        )
        return
    say(f"{path}: root v{status.version}: {status.describe()}")
    say("complete: ready to publish" if status.complete else "NOT complete: more signatures are needed")


@app.command()
def sign(
    file: Annotated[Path, typer.Argument(help="A pending N.root.json (carried on removable media).")],
    key: Annotated[str, typer.Option("--key", help="Private-key URI of the signer (file2:, hsm:, secret:, ...).")],
    keyid: Annotated[str | None, typer.Option(help="Which root key this is (for remote backends).")] = None,
    secret_env: Annotated[str | None, typer.Option(help="Variable holding the passphrase or PIN.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add ONE signature to a pending root metadata file (offline ceremony step)."""
    from chiron.trust.ceremony import sign_file

    status = sign_file(file, key, keyid, secret_env)
    if status is None:  # sign_file refuses anything but root metadata, so this is a bug
        raise RuntimeError(f"{file}: signed, but no signature status for a root file")
    _print_status(file, status, as_json)


@keys_app.command("status")
def keys_status(
    file: Annotated[Path, typer.Argument(help="An N.root.json (N-1.root.json must be beside it for N > 1).")],
    as_json: JsonOpt = False,
) -> None:
    """Who has signed a root file and who is missing. Exit 0 complete, 1 threshold not met."""
    from chiron.trust.ceremony import previous_root
    from chiron.trust.metadata import parse_root, signature_status

    try:
        data = file.read_bytes()
    except OSError as exc:
        from chiron.errors import UsageError

        raise UsageError(f"{file}: cannot read: {exc.strerror}") from None
    md = parse_root(data, str(file))
    status = signature_status(md, previous_root(file, md.signed.version))
    _print_status(file, status, as_json)
    raise typer.Exit(ExitCode.OK if status.complete else ExitCode.VERIFY_FAILED)


@keys_app.command("new-root")
def keys_new_root(
    directory: Annotated[Path, typer.Argument(help="Root directory (N.root.json files); v1 if empty.")],
    key: Annotated[list[str], typer.Option("--key", help="ROLE=PUBLIC_KEY_FILE (PEM or TUF key JSON); repeat.")],
    threshold: Annotated[list[str], typer.Option("--threshold", help="ROLE=N (default 1).")] = [],  # noqa: B006
    expires: Annotated[str, typer.Option(help="Validity, e.g. 365d.")] = "365d",
) -> None:
    """Write an UNSIGNED root for a signing ceremony; then each holder runs 'chiron sign'."""
    from datetime import UTC, datetime, timedelta

    from chiron.core.models import parse_duration
    from chiron.trust.ceremony import key_from_file, new_root

    role_keys: dict[str, list[Any]] = {r: [] for r in ("root", "targets", "snapshot", "timestamp")}
    for role, value in _role_pairs(key, "--key"):
        role_keys[role].append(key_from_file(Path(value)))
    empty = [r for r, ks in role_keys.items() if not ks]
    if empty:
        from chiron.errors import UsageError

        raise UsageError(f"--key: no key given for role(s) {', '.join(empty)}")
    thresholds = {role: int(value) for role, value in _role_pairs(threshold, "--threshold")}
    out = new_root(directory, role_keys, thresholds, timedelta(seconds=parse_duration(expires)), datetime.now(UTC))
    say(f"wrote unsigned {out}; sign it with: chiron sign {out} --key URI (each root key holder)")


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="The role whose keys change: root, targets, snapshot or timestamp.")],
    root_dir: Annotated[Path, typer.Option("--root-dir", help="Directory of N.root.json files.")],
    add: Annotated[list[Path], typer.Option("--add", help="Public key file to add; repeat.")] = [],  # noqa: B006
    revoke: Annotated[list[str], typer.Option("--revoke", help="Keyid to remove; repeat.")] = [],  # noqa: B006
    threshold: Annotated[int | None, typer.Option(help="New threshold for the role.")] = None,
    expires: Annotated[str, typer.Option(help="Validity of the new root, e.g. 365d.")] = "365d",
) -> None:
    """Write root N+1 with ROLE's keys changed; it needs signatures of the old AND new root thresholds."""
    from datetime import UTC, datetime, timedelta

    from chiron.core.models import parse_duration
    from chiron.trust.ceremony import key_from_file, rotate

    keys = [key_from_file(p) for p in add]
    out = rotate(root_dir, role, keys, revoke, threshold, timedelta(seconds=parse_duration(expires)), datetime.now(UTC))
    say(
        f"wrote unsigned {out}: it needs the root threshold of the previous AND of this root; "
        f"sign with: chiron sign {out} --key URI"
    )


@keys_app.command("init")
def keys_init(
    directory: Annotated[Path, typer.Argument(help="Where to write the keys (created, mode 0700).")],
    root_expires: Annotated[str, typer.Option(help="Validity of root v1, e.g. 365d.")] = "365d",
    force: Annotated[bool, typer.Option(help="Replace keys already in DIR.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a THROW-AWAY development key set: Ed25519 PEM per role (0600) and a signed 1.root.json."""
    from datetime import UTC, datetime, timedelta

    from chiron.core.models import parse_duration
    from chiron.errors import UsageError
    from chiron.trust.devkeys import init_dev_keys

    try:
        seconds = parse_duration(root_expires)
    except ValueError as exc:
        raise UsageError(f"--root-expires: {exc}") from None
    made = init_dev_keys(directory, root_expires=timedelta(seconds=seconds), now=datetime.now(UTC), force=force)
    if as_json:
        emit(
            {
                "schema": "chiron.keys-init/1",
                "directory": str(made.directory),
                "root": str(made.root_path),
                "root_fingerprint": made.fingerprint,
                "keyids": made.keyids,
            }
        )
        return
    say(f"wrote development keys to {made.directory} (private keys: mode 0600, never packed)")
    for role, keyid in made.keyids.items():
        say(f"  {role:<10} {keyid}")
    say(f"root metadata: {made.root_path}")
    say(f"root fingerprint: {made.fingerprint}")
    say("These keys are for development only: use HSM/KMS keys and a signing ceremony in production.")
