"""Where a host keeps things, and the careful file-system steps every other module uses: directories
made with explicit modes and checked for owner and mode, deletion that never follows a symlink, the
atomic switch of a link, and release ids that are one safe path segment."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chiron.core.fs import fsync_dir
from chiron.core.hoststate import check_release_id, damaged
from chiron.errors import EnvironmentProblem, HostStateError, Refused, UsageError

STEPS = ("verified", "staged", "venv", "tool", "health", "switched", "committed")
# After the switch of a release that is brought into service: crash points inside the trial.
TRIAL_STEPS = ("post-switch", "compose-up", "live-check")
KEPT_APPLIANCE = "appliance"  # releases/<id>/appliance: the verified file the release was installed from
PUBLIC_DIR = 0o755  # prefix, bin/, releases/, a release and its bin/: readable, writable by the owner only
PRIVATE_DIR = 0o700  # the state directory and what it holds


def crash_point(step: str) -> None:
    """Test hook: CHIRON_TEST_CRASH_AT=<step> kills the process (SIGKILL) right after that step."""
    if os.environ.get("CHIRON_TEST_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Paths:
    prefix: Path
    state: Path

    @classmethod
    def make(cls, prefix: Path, state_dir: Path | None) -> Paths:
        prefix = prefix.absolute()
        return cls(prefix, (state_dir or prefix / "state").absolute())

    @property
    def releases(self) -> Path:
        return self.prefix / "releases"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"

    @property
    def audit_head(self) -> Path:
        """The audit log's head kept beside ``current``: a state restore does not roll it back."""
        return self.prefix / "audit.head"

    @property
    def metadata(self) -> Path:
        return self.state / "metadata"

    @property
    def state_file(self) -> Path:
        return self.state / "state.json"

    @property
    def audit(self) -> Path:
        return self.state / "audit.jsonl"

    @property
    def txn(self) -> Path:
        return self.state / "txn.json"

    @property
    def trial(self) -> Path:
        """The release on trial after the switch, and how the last trial ended."""
        return self.state / "trial.json"

    @property
    def floor(self) -> Path:
        return self.state / "floor.json"

    @property
    def staging(self) -> Path:
        return self.state / "staging"

    def release(self, rid: str) -> Path:
        """``releases/<rid>``, for a validated id only."""
        return self.releases / check_release_id(rid)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------- owner and mode


def check_dir(path: Path) -> None:
    """Refuse a directory that others could rewrite: group- or world-writable, or owned by a user
    other than the one running (or root). Whoever can write it could replace the tool root runs."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise UsageError(f"{path}: a parent of it is not a directory") from None
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(path)  # a prefix or state directory given as a symlink is the operator's choice
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path}: is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise Refused(
            f"{path}: mode {mode:04o} lets other users write it (a planted tool or state would be trusted)",
            hint=f"chmod go-w {path}",
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise Refused(
            f"{path}: owned by uid {st.st_uid}, not by the user running chiron (uid {os.geteuid()}) or root",
            hint=f"run chiron as that user, or chown {os.geteuid()} {path} and chmod go-w {path}",
        )


def check_host_dirs(paths: Paths) -> None:
    """The directories a host operation writes into, checked before anything is written."""
    for path in (paths.prefix, paths.state, paths.bin, paths.releases, paths.metadata, paths.staging):
        check_dir(path)
    for inner in (paths.bin, paths.releases, paths.metadata, paths.staging):
        refuse_link(inner)


def refuse_link(path: Path) -> None:
    """chiron creates, writes and deletes under these directories: it never follows a symlink there."""
    if os.path.islink(path):
        raise HostStateError(
            f"{path}: is a symlink; chiron never follows a symlink where it writes or deletes",
            hint=f"replace it by a directory (mv {path} {path}.link; mkdir {path}) and check where it pointed",
        )


def ensure_dir(path: Path, mode: int, *, follow: bool = False) -> Path:
    """Create ``path`` (and missing parents, with the same mode) with exactly ``mode``, whatever the
    umask; an existing one is left as it is (its owner and mode are checked by ``check_host_dirs``)."""
    if not follow:
        refuse_link(path)
    if path.is_dir():
        return path
    if not path.parent.exists():
        ensure_dir(path.parent, mode, follow=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise Refused(f"{path}: exists and is not a directory") from None
        return path
    os.chmod(path, mode)  # mkdir's mode is masked by the umask; this is not
    return path


# ---------------------------------------------------------------- deletion and links


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it without ever following a symlink: a symlink is removed
    itself, never its target; a parent that is a symlink is refused."""
    refuse_link(path.parent)
    if os.path.islink(path):
        path.unlink()
        return
    if not path.exists():
        return
    # shutil.rmtree walks with file descriptors (avoids_symlink_attacks): links inside are unlinked.
    shutil.rmtree(path, ignore_errors=True)


def switch_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a new symlink renamed over the old one, then fsync."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def live_release(paths: Paths) -> str | None:
    """The release ``current`` points to (validated), or None when there is no ``current`` link."""
    try:
        target = os.readlink(paths.current)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostStateError(f"{paths.current}: is not a symlink ({exc.strerror})", hint="restore it") from None
    head, _, rid = target.partition("/")
    if head != "releases":
        raise damaged(paths.current, f"points to '{target[:120]}', not to releases/<id>")
    try:
        return check_release_id(rid)
    except ValueError as exc:
        raise damaged(paths.current, f"points to a bad release id: {exc}") from None


@contextlib.contextmanager
def naming(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError without a file name (ENOSPC from a write, EIO) into one that names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        raise EnvironmentProblem(f"{path}: {what}: {exc.strerror or exc}") from None
