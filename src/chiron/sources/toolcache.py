"""The cache of built tool zips, and why a cached zip can be trusted.

Building a pex takes seconds; a warm build or a mirror refresh should not pay it again, so the
normalized tool zip is cached under ``CACHE/tool/<inputs>.zip``, keyed by the sha256 of everything
it is built from (chiron's version, the tool wheels' sha256, the format, shebang, zip time, the
build interpreter and the extra platforms).

Whatever comes out of this cache is signed into an appliance, and whoever can write the cache
could replace the zip *and* a record beside it. So the record (the zip's sha256 and its
tool-members list, for its inputs key) carries an HMAC made with a key that does not live in the
cache: ``$XDG_STATE_HOME/chiron/tool-cache.key`` (default ``~/.local/state/chiron``), mode 0600,
made on first use. A zip whose bytes, record or MAC do not agree is not used: the tool is built
anew and the result says so. When the key cannot be made or is readable by others, nothing is
cached or taken from the cache.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiron import __version__
from chiron.archive.toolzip import normalize_zip
from chiron.core.fs import sha256_file, temp_beside, write_atomic
from chiron.core.text import canonical_json
from chiron.sources.tool import ZIP_TIME, ToolFormat, build_tool

KEY_NAME = "tool-cache.key"


@dataclass(frozen=True)
class ToolZip:
    """A normalized tool zip ready to be signed: its path, sha256 and tool-members list."""

    path: Path
    sha256: str
    members: list[dict[str, Any]]
    note: str | None = None  # why the cache was not used, when that is worth telling


def key_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "chiron" / KEY_NAME


def secret_key(path: Path) -> tuple[bytes | None, str | None]:
    """The cache key (made on first use), or None and why it cannot be used."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(256).strip()
    except OSError as exc:
        return None, f"the tool cache key {path} cannot be used ({exc.strerror or exc}): the tool zip is not cached"
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None, (
            f"the tool cache key {path} is not a private file of this user (mode {stat.S_IMODE(st.st_mode):o}): "
            "the tool zip is not cached (remove the file; chiron makes a new one)"
        )
    if len(data) != 64:
        return None, f"the tool cache key {path} is damaged: the tool zip is not cached (remove the file)"
    return data, None


def inputs_key(fmt: ToolFormat, wheels: Path, shebang: str, platforms: list[str]) -> str:
    """sha256 of everything the tool zip is built from."""
    data = {
        "chiron": __version__,
        "format": fmt,
        "shebang": shebang,
        "zip_time": list(ZIP_TIME),
        "wheels": {w.name: sha256_file(w) for w in sorted(wheels.glob("*.whl"))},
        "python": f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}",
        "platforms": platforms,
    }
    return hashlib.sha256(canonical_json(data)).hexdigest()


def record_mac(secret: bytes, inputs: str, sha256: str, members: list[dict[str, Any]]) -> str:
    body = canonical_json({"inputs": inputs, "sha256": sha256, "members": members})
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def check_cached(zip_path: Path, record_path: Path, inputs: str, secret: bytes) -> ToolZip | str:
    """The cached zip when record, MAC and bytes agree; otherwise why not."""
    try:
        record = json.loads(record_path.read_bytes())
        sha, members, mac = record["sha256"], record["members"], record["mac"]
    except (OSError, ValueError, TypeError, KeyError):
        return "its record is unreadable or from an older chiron"
    if not (isinstance(sha, str) and isinstance(members, list) and isinstance(mac, str)):
        return "its record has fields of the wrong type"
    if not hmac.compare_digest(mac, record_mac(secret, inputs, sha, members)):
        return "its record is not authenticated by this user's cache key"
    # Re-hashed on every use: these bytes are signed into the appliance.
    if sha256_file(zip_path) != sha:
        return "its bytes do not match the authenticated record"
    return ToolZip(zip_path, sha, members)


def cached_tool_zip(
    *, fmt: ToolFormat, wheels: Path, shebang: str, platforms: list[str], cache_dir: Path, work: Path
) -> ToolZip:
    """The normalized tool zip for these inputs: from the cache when it proves itself, else built
    (in ``work``) and cached."""
    inputs = inputs_key(fmt, wheels, shebang, platforms)
    cache = cache_dir / "tool"
    zip_path, record_path = cache / f"{inputs}.zip", cache / f"{inputs}.json"
    secret, note = secret_key(key_file())
    if secret is not None and zip_path.is_file():
        got = check_cached(zip_path, record_path, inputs, secret)
        if isinstance(got, ToolZip):
            return got
        note = f"the cached tool zip {zip_path} was not used ({got}): built anew"
    raw, normalized = work / "tool.raw", work / "tool.zip"
    build_tool(fmt, wheels, raw, shebang, platforms)
    members = normalize_zip(raw, normalized, ZIP_TIME)
    raw.unlink()
    sha = sha256_file(normalized)
    if secret is None:
        return ToolZip(normalized, sha, members, note)
    # Through a temporary file beside the cache entry: the work folder may be on another filesystem.
    with temp_beside(zip_path) as (fd, tmp), normalized.open("rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
        os.replace(tmp, zip_path)
    record = {"sha256": sha, "members": members, "inputs": inputs, "mac": record_mac(secret, inputs, sha, members)}
    write_atomic(record_path, canonical_json(record))
    return ToolZip(zip_path, sha, members, note)


def tool_members_of(zip_path: Path) -> list[dict[str, Any]]:
    """The signed tool-members list of an existing (normalized) tool zip, read from the zip itself."""
    with zipfile.ZipFile(zip_path) as z:
        return [
            {"name": i.filename, "size": i.file_size, "sha256": hashlib.sha256(z.read(i)).hexdigest()}
            for i in z.infolist()
            if not i.is_dir()
        ]
