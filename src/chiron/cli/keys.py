"""Commands for signing keys: sign, keys status / new-root / rotate / init."""

from datetime import timedelta
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
from chiron.errors import ExitCode, UsageError


def _role_pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or role not in ("root", "targets", "snapshot", "timestamp") or not value:
            raise UsageError(f"{what}: '{item}' is not ROLE=VALUE with ROLE one of root, targets, snapshot, timestamp")
        out.append((role, value))
    return out


def _thresholds(items: list[str]) -> dict[str, int]:
    out = {}
    for role, value in _role_pairs(items, "--threshold"):
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise UsageError(f"--threshold {role}={value}: '{value}' is not a whole number of at least 1")
        out[role] = int(value)
    return out


def _duration(option: str, text: str) -> timedelta:
    """A validity option (``365d``) as a timedelta; a one-line UsageError naming the option."""
    from chiron.core.models import parse_duration

    try:
        return timedelta(seconds=parse_duration(text))
    except (ValueError, OverflowError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else f"'{text}' is too long"
        raise UsageError(f"{option}: {message}") from None


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
    _print_status(file, status, as_json)


@keys_app.command("status")
def keys_status(
    file: Annotated[Path, typer.Argument(help="An N.root.json (N-1.root.json must be beside it for N > 1).")],
    as_json: JsonOpt = False,
) -> None:
    """Who has signed a root file and who is missing. Exit 0 complete, 1 threshold not met."""
    from chiron.trust.ceremony import previous_root, read_root
    from chiron.trust.metadata import signature_status

    md = read_root(file)
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
    from datetime import UTC, datetime

    from chiron.trust.ceremony import key_from_file, new_root

    validity = _duration("--expires", expires)
    thresholds = _thresholds(threshold)
    role_keys: dict[str, list[Any]] = {r: [] for r in ("root", "targets", "snapshot", "timestamp")}
    for role, value in _role_pairs(key, "--key"):
        role_keys[role].append(key_from_file(Path(value), "--key"))
    empty = [r for r, ks in role_keys.items() if not ks]
    if empty:
        raise UsageError(f"--key: no key given for role(s) {', '.join(empty)}")
    out = new_root(directory, role_keys, thresholds, validity, datetime.now(UTC))
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
    from datetime import UTC, datetime

    from chiron.trust.ceremony import key_from_file, rotate

    validity = _duration("--expires", expires)
    keys = [key_from_file(p, "--add") for p in add]
    out = rotate(root_dir, role, keys, revoke, threshold, validity, datetime.now(UTC))
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
    from datetime import UTC, datetime

    from chiron.trust.devkeys import init_dev_keys

    validity = _duration("--root-expires", root_expires)
    made = init_dev_keys(directory, root_expires=validity, now=datetime.now(UTC), force=force)
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
