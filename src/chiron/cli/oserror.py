"""An OSError that no check of chiron's turned into a ChironError, told as one: the file(s) it names,
what chiron was doing, and what to do about it.

A path the user named on the command line that does not exist, whose directory does not, or that
already exists where it is to be created, is bad usage (exit 2), like every other bad input.
Everything else is the host's: a full disk, a permission, a file that vanished while chiron ran,
damage below the named path (exit 3).
"""

from __future__ import annotations

import errno
import os
import shlex

from chiron.cli.argv import GLOBAL_FLAGS, GLOBAL_VALUED
from chiron.core.progress import failed_step
from chiron.errors import ChironError, EnvironmentProblem, UsageError

_HINTS = {
    errno.ENOSPC: "free space on that filesystem, then run again",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota, then run again",
    errno.EACCES: "check the owner and mode of that path, or run as the user who owns it",
    errno.EPERM: "check the owner and mode of that path, or run as the user who owns it",
    errno.EROFS: "the filesystem is mounted read-only: use a writable location",
    errno.EIO: "the disk or medium reported an I/O error: check it (dmesg); copy the files to a healthy disk",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run again",
    errno.ENFILE: "the system's open-file table is full: try again later",
    errno.ENOENT: "it vanished while chiron ran, or its directory does not exist",
}


def _text(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else str(name)


def _values(args: list[str]) -> list[str]:
    """Every path the command line may name: PATH, --opt=PATH, ROLE=PATH (keys new-root --key) and
    file2:PATH (a key URI)."""
    values: list[str] = []
    for arg in args:
        values += [arg, *(arg.split("=")[1:]), arg.partition(":")[2]]
    return [v for v in values if v and not v.startswith("-")]


def _missing_ancestor(path: str) -> str | None:
    """The first directory above ``path`` (absolute) that does not exist, if any."""
    parent = os.path.dirname(path)
    if parent == path:
        return None
    return _missing_ancestor(parent) or (None if os.path.lexists(parent) else parent)


def _named_by_user(exc: OSError, failed: str, args: list[str]) -> str | None:
    """A one-line usage message if ``exc`` on ``failed`` is the fault of a path given on the command
    line: it does not exist, its directory does not, or it already exists where it is to be
    created. None when the fault lies below what the user named (the host's state, a file that
    vanished), and for a file where a directory must be (tests/test_cli.py holds that to exit 3)."""
    target = os.path.abspath(failed)
    for value in _values(args):
        named = os.path.abspath(value)
        if isinstance(exc, FileExistsError):
            if named == target:
                return f"{value}: already exists" + ("" if os.path.isdir(named) else ", and is not a directory")
            continue
        # The failing path is the named one or a temporary file beside it.
        if target != named and os.path.dirname(target) != os.path.dirname(named):
            continue
        missing = _missing_ancestor(named)
        if missing is not None:
            missing = missing if os.path.isabs(value) else os.path.relpath(missing)  # as the user wrote it
            return f"{value}: its directory {missing} does not exist"
        if target == named:
            return f"{value}: no such file or directory"
    return None


def command_line(args: list[str], command: list[str]) -> list[str]:
    """``args`` without the global options, from the command's name on (as far as it can be found)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in GLOBAL_FLAGS or arg.partition("=")[0] in GLOBAL_VALUED:
            skip = arg in GLOBAL_VALUED
        else:
            out.append(arg)
    return out[out.index(command[0]) :] if command and command[0] in out else out


def describe_os_error(exc: OSError, args: list[str], command: list[str]) -> ChironError:
    """The ChironError to report for ``exc``, raised while running ``chiron ARGS`` (``command`` is
    the command's path in ARGS, e.g. ["keys", "init"], without the global options)."""
    files = [_text(f) for f in (exc.filename, exc.filename2) if f not in (None, "")]
    if isinstance(exc, FileNotFoundError | FileExistsError) and files:
        usage = _named_by_user(exc, files[0], args)
        if usage is not None:
            return UsageError(usage)
    what = exc.strerror or str(exc) or type(exc).__name__
    doing = failed_step(exc)
    # The command line names what the command works on (the output, the directory, the store),
    # which is all there is to go on when the system names no file.
    run = shlex.join(["chiron", *command_line(args, command)])
    run = run if len(run) <= 200 else run[:197] + "..."
    context = f"while {doing}, running: {run}" if doing else f"running: {run}"
    if files:
        message = f"{' -> '.join(files)}: {what}, {context}"
    else:
        message = f"{what} (the system did not name the file), {context}"
    return EnvironmentProblem(message, hint=_HINTS.get(exc.errno or 0))
