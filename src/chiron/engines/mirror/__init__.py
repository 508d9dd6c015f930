"""The mirror store on the connected host: refresh it on a schedule, and restore it from an appliance.

A store is one directory (docs/mirror.md)::

    state.json                   what the store holds: the appliance, spec, key URIs, every version built
    .lock                        held by a refresh or restore (flock: a killed run never leaves it stuck)
    artifacts/sha256/xx/<sha>    wheels (and sdists), content-addressed; artifacts/tool/ caches tool zips
    oci/                         one OCI layout with every image blob fetched so far
    locks/<N>.pylock.toml        the lock of metadata version N
    tuf/root/<V>.root.json       the root chain signed with; tuf/{targets,snapshot,timestamp}.json: latest
    appliances/<name>-<version>-<N>.pex (+ .sig, + .delta)

A refresh re-resolves the spec, fetches only what the store lacks, applies the policy, and builds
version N+1 only when something changed (``--force`` builds anyway, e.g. to renew expiring metadata).
Every file is written atomically and ``state.json`` is written last, so a killed run leaves the store
at version N; the next run reuses every artifact that finished downloading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive.layout import METADATA_PREFIX, TOOL_TARGET, root_member_version, root_version
from chiron.archive.reader import read_layout
from chiron.core import filelock as _lockfile
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.fs import copy_region, sha256_file, write_atomic
from chiron.core.models import ApplianceSpec
from chiron.core.spec import LoadedSpec, load_spec
from chiron.core.text import canonical_json
from chiron.engines import diff, policy
from chiron.engines.build import (
    ZIP_TIME,
    BuildOptions,
    build,
    image_refs,
    load_lock,
    platforms_for,
    source_date_epoch,
    tool_zip_for,
)
from chiron.errors import PolicyViolation, Refused, SpecError, UsageError, VerificationError
from chiron.sources import images as _images
from chiron.sources import lock as _lock
from chiron.sources.cache import PARTIAL, ArtifactCache
from chiron.sources.tool import ToolFormat
from chiron.trust import metadata as _trust

STORE_FORMAT = "chiron-mirror/1"


@dataclass(frozen=True)
class Store:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def oci(self) -> Path:
        return self.root / "oci"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def appliances(self) -> Path:
        return self.root / "appliances"

    def state(self) -> dict[str, Any] | None:
        if not self.state_file.is_file():
            return None
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{self.state_file}: unreadable store state: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT or not data.get("versions"):
            raise UsageError(f"{self.state_file}: not a {STORE_FORMAT} store state")
        return data

    def write_state(self, data: dict[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")

    def locked(self, op: str) -> Any:
        self.root.mkdir(parents=True, exist_ok=True)
        return _lockfile.hold(
            self.root / ".lock", op, hint="another refresh or restore is running on this store; let it finish"
        )

    def sweep(self, state: dict[str, Any] | None) -> int:
        """Remove what killed runs left (under the lock only): chiron's own temporary files, and a
        version that was built but never recorded (a run that died before writing state.json), so that
        nothing unrecorded can be mistaken for, or shipped as, a signed version."""
        removed = 0
        for d in (self.artifacts, self.appliances, self.locks, self.tuf, self.tuf / "root", self.root):
            if d.is_dir():
                for p in d.iterdir():
                    if _temporary(p):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                        removed += 1
        latest = state["versions"][-1] if state else None
        newest = int(latest["metadata_version"]) if latest else 0
        for d in (self.appliances, self.locks):
            for p in d.glob("*") if d.is_dir() else ():
                m = _VERSIONED.search(p.name)
                if m and int(m.group(1) or m.group(2)) > newest:
                    p.unlink()  # built after the last recorded version: an orphan of a killed run
                    removed += 1
        if latest and removed and (self.root / latest["file"]).is_file():
            _save_tuf(self, self.root / latest["file"], None)  # the public metadata of the recorded latest
        return removed


def _temporary(p: Path) -> bool:
    """A file or directory chiron writes only while it works (never the store's own data)."""
    name = p.name
    if name.startswith(PARTIAL):
        return not _resumable(p)
    return name.startswith(".") and (
        name.endswith((".tmp", ".partial")) or name.startswith(".tool-") or name == ".pending.pylock.toml"
    )


_VERSIONED = re.compile(r"-(\d+)\.(?:pex|pyz|delta)(?:\.sig)?$|^(\d+)\.pylock\.toml$")


def _resumable(p: Path) -> bool:
    """A partial download named by its pinned sha256: the next fetch continues it."""
    digest = p.name.removeprefix(PARTIAL)
    return p.name.startswith(PARTIAL) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


@dataclass(frozen=True)
class RefreshOptions:
    store: Path
    tool_wheels: Path
    spec: Path | None = None  # default: the spec the store was last refreshed from
    base_dir: Path | None = None  # where the spec's relative paths resolve (default: its folder)
    tool_format: ToolFormat = "pex"
    policy: Path | None = None  # default: policy.toml beside the spec, if there is one
    delta_from: Path | None = None  # an older appliance or a host inventory (chiron inventory)
    force: bool = False
    source_date_epoch: int | None = None
    show_progress: bool = True


@dataclass
class RefreshResult:
    store: Path
    changed: bool
    name: str
    version: str
    metadata_version: int
    appliance: Path | None
    downloaded: int
    bytes_downloaded: int
    reused: int
    seconds: float
    image_blobs_fetched: int = 0  # blobs new in the store's OCI layout (what skopeo fetched)
    image_bytes_fetched: int = 0
    delta: Path | None = None
    delta_size: int | None = None
    size: int | None = None
    changelog: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.mirror-refresh/1",
            "store": str(self.store),
            "changed": self.changed,
            "name": self.name,
            "version": self.version,
            "metadata_version": self.metadata_version,
            "appliance": str(self.appliance) if self.appliance else None,
            "size": self.size,
            "delta": str(self.delta) if self.delta else None,
            "delta_size": self.delta_size,
            "downloaded": self.downloaded,
            "bytes_downloaded": self.bytes_downloaded,
            "reused": self.reused,
            "image_blobs_fetched": self.image_blobs_fetched,
            "image_bytes_fetched": self.image_bytes_fetched,
            "seconds": round(self.seconds, 3),
            "changelog": self.changelog,
            "notes": self.notes,
        }


def content_key(
    *, spec: bytes, pylock: bytes, images: list[dict[str, Any]], files: dict[str, str], root: bytes, tool_sha256: str
) -> str:
    """What an appliance is made of; equal keys mean a new build would only re-sign the same content."""
    return hashlib.sha256(
        canonical_json(
            {
                "spec": hashlib.sha256(spec).hexdigest(),
                "lock": hashlib.sha256(pylock).hexdigest(),
                "images": images,
                "files": files,
                "root": hashlib.sha256(root).hexdigest(),
                "tool": tool_sha256,
            }
        )
    ).hexdigest()


def _load(spec_path: Path, base: Path | None) -> LoadedSpec:
    loaded = load_spec(spec_path)
    if base is not None:
        loaded = LoadedSpec(spec=loaded.spec, path=(base / spec_path.name).absolute(), raw=loaded.raw)
    return loaded


def _files(loaded: LoadedSpec, files_dir: Path | None) -> dict[str, str]:
    out = {}
    for i, f in enumerate(loaded.spec.files):
        src = files_dir / f.dest if files_dir else loaded.resolve_path(f.src, f"files[{i}].src")
        out[f.dest] = sha256_file(src) if src.is_file() else ""
    return out


def refresh(opts: RefreshOptions) -> RefreshResult:
    """One refresh run (see the module docstring); raises PolicyViolation before building anything."""
    started = time.monotonic()
    store = Store(opts.store.absolute())
    with store.locked("mirror refresh"), _telemetry.span("chiron.mirror.refresh", store=str(store.root)) as sp:
        state = store.state()
        store.sweep(state)
        spec_path = opts.spec or (Path(state["spec"]) if state else None)
        if spec_path is None:
            raise UsageError(f"{store.root}: a new store needs the SPEC argument (later runs remember it)")
        base = opts.base_dir or (Path(state["base"]) if state and state.get("base") else None)
        files_dir = Path(state["files_dir"]) if state and state.get("files_dir") and opts.spec is None else None
        loaded = _load(spec_path.absolute(), base)
        spec = loaded.spec
        if state and state["name"] != spec.appliance.name:
            raise UsageError(
                f"{store.root} holds appliance '{state['name']}', {spec_path} builds '{spec.appliance.name}'",
                hint="use one store per appliance",
            )
        policy_path = _policy_path(opts, spec_path, state)
        rules = policy.load(policy_path)
        if opts.delta_from is not None:
            from chiron.archive import delta

            delta.base_content(opts.delta_from)  # a wrong --delta-from fails now, not after the build
        if policy_path is None:
            # No policy file: only what the spec itself asks for (no yanked releases; sdists if allowed).
            rules = policy.LoadedPolicy(
                policy.Policy(sources=policy.SourceRules(sdists=spec.python.allow_sdists)), None, {}
            )

        lock, pages = _resolve(store, loaded, latest := state["versions"][-1] if state else None)
        cache = ArtifactCache(store.artifacts)
        measured: dict[str, tuple[str, int]] = {}
        paths: dict[str, Path] = {}
        arts = lock.artifacts()
        total = sum(a.size or 0 for a in arts)
        with _progress.bar(total, "fetching", enabled=opts.show_progress) as bar:
            for art in arts:
                path, sha, size = cache.fetch(art.url, art.sha256, art.filename, progress=bar.advance)
                measured[art.filename] = (sha, size)
                paths[art.filename] = path
        _lock.fill_hashes(lock, measured)
        blobs_before = _blob_sizes(store.oci)
        packed = _images.fetch(image_refs(loaded), store.oci)
        new_blobs = {d: n for d, n in _blob_sizes(store.oci).items() if d not in blobs_before}
        recorded = [i.as_dict() for i in packed]

        violations = policy.check(rules, lock, paths)
        if violations:
            _telemetry.set_attr(sp, result="policy")
            raise PolicyViolation(violations, [v.as_dict() for v in violations], str(policy_path or "(defaults)"))

        pylock = _lock.write_pylock(lock, spec)
        root_chain = _trust.load_root_chain(loaded.resolve_path(spec.trust.root, "trust.root"))
        _check_same_trust(store, root_chain)
        epoch = source_date_epoch(opts.source_date_epoch)
        number = latest["metadata_version"] + 1 if latest else (epoch if epoch is not None else int(time.time()))
        ext = "pex" if opts.tool_format == "pex" else "pyz"
        out = store.appliances / f"{spec.appliance.name}-{spec.appliance.version}-{number}.{ext}"
        pending = store.locks / ".pending.pylock.toml"
        write_atomic(pending, pylock)
        bopts = BuildOptions(
            spec=spec_path,
            output=out,
            tool_wheels=opts.tool_wheels,
            cache_dir=store.artifacts,
            tool_format=opts.tool_format,
            source_date_epoch=epoch,
            metadata_version=number,
            show_progress=opts.show_progress,
            base_dir=base,
            lock_file=pending,
            files_dir=files_dir,
            images=(store.oci, recorded) if packed else None,
        )
        with tempfile.TemporaryDirectory(prefix=".tool-", dir=store.root) as tmp:
            tool, _members = tool_zip_for(
                bopts, ZIP_TIME, Path(tmp), platforms_for(opts.tool_format, spec.environments)[0]
            )
            tool_sha = sha256_file(tool)
        key = content_key(
            spec=loaded.raw,
            pylock=pylock,
            images=recorded,
            files=_files(loaded, files_dir),
            root=root_chain[-1],
            tool_sha256=tool_sha,
        )
        stats = cache.stats
        renew = _renewal(store, spec) if latest and key == latest["content_key"] and not opts.force else None
        if latest and key == latest["content_key"] and not opts.force and renew is None:
            pending.unlink()
            _telemetry.set_attr(sp, result="unchanged", downloaded=stats.downloaded)
            unchanged = RefreshResult(
                store=store.root,
                changed=False,
                name=spec.appliance.name,
                version=latest["version"],
                metadata_version=latest["metadata_version"],
                appliance=store.root / latest["file"],
                downloaded=stats.downloaded,
                bytes_downloaded=stats.bytes_downloaded,
                reused=stats.reused,
                image_blobs_fetched=len(new_blobs),
                image_bytes_fetched=sum(new_blobs.values()),
                seconds=time.monotonic() - started,
                notes=[f"nothing changed upstream: version {latest['metadata_version']} stays the newest"],
            )
            if opts.delta_from is not None and unchanged.appliance and unchanged.appliance.is_file():
                # Nothing new to sign, but the operator still needs a delta to the newest version.
                made = delta.make(opts.delta_from, unchanged.appliance, unchanged.appliance.with_suffix(".delta"))
                unchanged.delta, unchanged.delta_size = made.path, made.size
            return unchanged

        built = build(bopts)
        notes = [renew] if renew else []
        os.replace(pending, store.locks / f"{number}.pylock.toml")
        _save_tuf(store, out, root_chain)
        result = RefreshResult(
            store=store.root,
            changed=True,
            name=spec.appliance.name,
            version=spec.appliance.version,
            metadata_version=number,
            appliance=out,
            size=built.size,
            downloaded=stats.downloaded,
            bytes_downloaded=stats.bytes_downloaded,
            reused=stats.reused,
            image_blobs_fetched=len(new_blobs),
            image_bytes_fetched=sum(new_blobs.values()),
            seconds=0.0,
            notes=notes,
        )
        previous = store.root / latest["file"] if latest else None
        if previous is not None and previous.is_file():
            result.changelog = diff.diff(previous, out)
        if opts.delta_from is not None:
            made = delta.make(opts.delta_from, out, out.with_suffix(".delta"))
            result.delta, result.delta_size = made.path, made.size
        entry = {
            "metadata_version": number,
            "version": spec.appliance.version,
            "created": _created(out),
            "file": str(out.relative_to(store.root)),
            "sha256": sha256_file(out),
            "size": built.size,
            "content_key": key,
            "lock": f"locks/{number}.pylock.toml",
            "downloaded": stats.downloaded,
            "bytes_downloaded": stats.bytes_downloaded,
            "resolved_from": pages,
        }
        store.write_state(
            {
                "format": STORE_FORMAT,
                "name": spec.appliance.name,
                "spec": str(spec_path.absolute()),
                "base": str(base.absolute()) if base else None,
                "files_dir": str(files_dir) if files_dir else None,
                # Only a policy given with --policy is remembered; policy.toml beside the spec is found anew.
                "policy": str(opts.policy.absolute()) if opts.policy else (state or {}).get("policy"),
                "keys": _key_uris(loaded),
                "versions": [*(state["versions"] if state else []), entry],
            }
        )
        result.seconds = time.monotonic() - started
        _telemetry.set_attr(sp, result="built", version=number, downloaded=stats.downloaded)
        _telemetry.count("chiron.mirror.downloads", stats.downloaded)
        return result


def _renewal(store: Store, spec: ApplianceSpec) -> str | None:
    """Why the same content must be signed again: the newest timestamp metadata has less than half
    its validity left (hosts refuse expired metadata, and a quiet upstream must not starve them)."""
    from datetime import UTC, datetime, timedelta

    try:
        signed = json.loads((store.tuf / "timestamp.json").read_text())["signed"]
        expires = datetime.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (OSError, ValueError, KeyError):
        return None
    window = timedelta(seconds=spec.trust.roles["timestamp"].expires_seconds / 2)
    if expires - datetime.now(UTC) > window:
        return None
    return (
        f"renewed: version {signed['version']}'s timestamp metadata expires {signed['expires']}; same content re-signed"
    )


def _policy_path(opts: RefreshOptions, spec_path: Path, state: dict[str, Any] | None) -> Path | None:
    """--policy, else the policy the store was refreshed with, else policy.toml beside the spec.

    A store that had a policy never silently runs without it: a recorded policy that has gone is an
    error, not a fallback to the defaults.
    """
    if opts.policy is not None:
        return opts.policy
    recorded = (state or {}).get("policy")
    if recorded:
        if not Path(recorded).is_file():
            raise SpecError(
                f"{recorded}: the policy this store was refreshed with is missing",
                hint="restore it, or pass --policy FILE to use another one",
            )
        return Path(recorded)
    beside = spec_path.absolute().parent / "policy.toml"
    return beside if beside.is_file() else None


def _resolve(store: Store, loaded: LoadedSpec, latest: dict[str, Any] | None) -> tuple[_lock.Lock, dict[str, Any]]:
    """The lock, re-resolved with pip unless nothing it could depend on has changed.

    pip reads every locked project's index page on each run (~15 ms each): most of a no-change
    refresh. So the store records the sha256 of those pages; when the spec is the same and every page
    is byte-identical, the previous lock is the answer pip would give, and pip is not run. Any
    change, an unreachable page, or a spec that uses find_links runs pip; a spec's fixed lock is
    used as it is.
    """
    spec = loaded.spec
    key = hashlib.sha256(loaded.raw).hexdigest()
    index = spec.python.index_url
    usable = bool(index and spec.python.requirements and not spec.python.find_links and loaded.lock_path is None)
    recorded = (latest or {}).get("resolved_from") or {}
    pages_now = _index_pages(list(recorded.get("pages", {}))) if usable and recorded.get("spec") == key else None
    if latest and pages_now and pages_now == recorded["pages"]:
        lock = _lock.read_pylock(store.root / latest["lock"], spec)
        for pkg in lock.packages:
            pkg.yanked = pkg.name in recorded.get("yanked", [])
        return lock, recorded
    lock = load_lock(loaded)
    pages: dict[str, Any] = {}
    if usable and index:
        urls = [f"{index.rstrip('/')}/{pkg.name}/" for pkg in lock.packages]
        fetched = _index_pages(urls)
        # A page read before pip ran that differs now changed during this run: pip may have seen
        # either version, so record nothing and let the next run resolve again.
        moved = pages_now and fetched and any(pages_now.get(u, h) != h for u, h in fetched.items())
        if fetched is not None and not moved:
            pages = {"spec": key, "pages": fetched, "yanked": sorted(p.name for p in lock.packages if p.yanked)}
    return lock, pages


def _index_pages(urls: list[str]) -> dict[str, str] | None:
    """sha256 of each simple-index page (None if any cannot be read: then pip decides)."""
    import http.client
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def one(url: str) -> str:
        headers = {
            "User-Agent": "chiron",
            "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
            "Cache-Control": "max-age=0",  # as pip asks: a caching proxy must not answer "unchanged"
        }
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - the spec's index URL (http/https)
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - as above
            return hashlib.sha256(resp.read()).hexdigest()

    if not all(u.startswith(("http://", "https://")) for u in urls):
        return None
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(urls, pool.map(one, urls), strict=True))
    except (OSError, http.client.HTTPException, ValueError):
        return None  # pip decides, and reports what is wrong with the index


def _blob_sizes(layout: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in layout.glob("blobs/sha256/*")}


def _created(archive: Path) -> str:
    layout = read_layout(archive)
    offset, length = layout.regions()["appliance.json"]
    with archive.open("rb") as f:
        return str(json.loads(os.pread(f.fileno(), length, offset))["created"])


def _key_uris(loaded: LoadedSpec) -> dict[str, list[str]]:
    """Which keys sign each role, by URI as the spec gives them (never key material)."""
    return {role: [k.uri for k in r.keys] for role, r in loaded.spec.trust.roles.items()}


def _check_same_trust(store: Store, chain: list[bytes]) -> None:
    """The spec's root chain must extend the store's: same first root, no versions dropped."""
    stored = sorted(
        (p for p in store.tuf.glob("root/*.root.json") if root_version(p.name)), key=lambda p: root_version(p.name) or 0
    )
    if not stored:
        return
    if stored[0].read_bytes() != chain[0]:
        raise Refused(
            f"the spec's trust.root is a different root of trust than {store.root} was signed with",
            hint="point trust.root at the store's root chain (tuf/root/) or its successors",
        )
    for i, path in enumerate(stored[: len(chain)]):
        if path.read_bytes() != chain[i]:
            raise Refused(
                f"the spec's root version {i + 1} differs from the one {store.root} already signed with ({path})",
                hint="hosts trust the store's chain: extend it (chiron keys rotate), never replace a version",
            )
    if len(chain) < len(stored):
        raise Refused(
            f"the spec's trust.root has {len(chain)} root versions, the store already signed with {len(stored)}",
            hint=f"use the full chain: {store.tuf / 'root'}",
        )


def _save_tuf(store: Store, archive: Path, chain: list[bytes] | None) -> None:
    """Record the root chain and the latest targets/snapshot/timestamp (public metadata only)."""
    for i, data in enumerate(chain or [], start=1):
        write_atomic(store.tuf / "root" / f"{i}.root.json", data)
    layout = read_layout(archive)
    with archive.open("rb") as f:
        for m in layout.members:
            base = m.name.removeprefix(METADATA_PREFIX)
            if m.name.startswith(METADATA_PREFIX) and root_member_version(m.name) is None:
                write_atomic(store.tuf / base, os.pread(f.fileno(), m.length, m.offset))


# ---------------------------------------------------------------- restore (disaster recovery)


def restore(
    archive: Path,
    store_dir: Path,
    *,
    spec: Path | None = None,
    base: Path | None = None,
    root_file: Path | None = None,
    root_sha256: str | None = None,
) -> dict[str, Any]:
    """Reconstitute a mirror store from a verified appliance, so the next refresh signs version N+1.

    Without ``spec`` the appliance's own spec (and [[files]]) is written into STORE/spec/, and its
    relative key paths resolve against ``base`` (default: that folder).
    """
    from chiron.engines.verify import verify

    report = verify(archive, root_file=root_file, root_sha256=root_sha256)
    if not report.ok:
        raise VerificationError(report.problems, hint="restore only from an appliance that verifies")
    store = Store(store_dir.absolute())
    with store.locked("mirror restore"):
        if store.state_file.exists():
            raise Refused(
                f"{store.root} already holds a mirror store",
                hint="restore into a new, empty directory (a store is never overwritten)",
            )
        store.sweep(None)
        layout = read_layout(archive)
        targets = report.targets_meta
        number = int(report.roles["targets"]["version"])
        cache = ArtifactCache(store.artifacts)
        chain: list[bytes] = []
        spec_raw = b""
        pylock = b""
        files: dict[str, str] = {}
        extracted = store.root / "spec"
        with archive.open("rb") as f:
            for m in layout.members:
                sha = targets.get(m.name, {}).get("sha256")
                if m.name.startswith("wheels/"):
                    copy_region(archive, m.offset, m.length, cache.path_for(str(sha)), sha)
                elif m.name.startswith(_images.PREFIX):
                    copy_region(archive, m.offset, m.length, store.oci / m.name.removeprefix(_images.PREFIX), sha)
                elif m.name.startswith("files/"):
                    files[m.name.removeprefix("files/")] = str(sha)
                    if spec is None:
                        dest = extracted / "files" / m.name.removeprefix("files/")
                        copy_region(archive, m.offset, m.length, dest, sha)
                elif m.name == "spec/appliance.toml":
                    spec_raw = os.pread(f.fileno(), m.length, m.offset)
                elif m.name == "lock/pylock.toml":
                    pylock = os.pread(f.fileno(), m.length, m.offset)
                elif root_member_version(m.name) is not None:
                    chain.append(os.pread(f.fileno(), m.length, m.offset))
        chain.sort(key=lambda data: _trust.parse_root(data, "root").signed.version)
        write_atomic(store.locks / f"{number}.pylock.toml", pylock)
        if spec is None:
            write_atomic(extracted / "appliance.toml", spec_raw)
            spec_path = extracted / "appliance.toml"
            base = base or extracted
        else:
            spec_path = spec.absolute()
        dest = store.appliances / f"{report.name}-{report.version}-{number}{archive.suffix or '.pex'}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_region(archive, 0, archive.stat().st_size, dest)
        sig = archive.with_name(archive.name + ".sig")
        if sig.is_file():
            shutil.copyfile(sig, dest.with_name(dest.name + ".sig"))
        _save_tuf(store, dest, chain)
        manifest = report.manifest
        key = content_key(
            spec=spec_raw,
            pylock=pylock,
            images=list(manifest.get("images", [])),
            files=files,
            root=chain[-1],
            tool_sha256=str(targets[TOOL_TARGET]["sha256"]),
        )
        loaded = _load(spec_path, base)
        state = {
            "format": STORE_FORMAT,
            "name": report.name,
            "spec": str(spec_path),
            "base": str(base.absolute()) if base else None,
            "files_dir": str(extracted / "files") if spec is None and files else None,
            "keys": _key_uris(loaded),
            "versions": [
                {
                    "metadata_version": number,
                    "version": report.version,
                    "created": manifest.get("created"),
                    "file": str(dest.relative_to(store.root)),
                    "sha256": sha256_file(dest),
                    "size": dest.stat().st_size,
                    "content_key": key,
                    "lock": f"locks/{number}.pylock.toml",
                    "downloaded": 0,
                    "bytes_downloaded": 0,
                    "restored_from": str(archive.absolute()),
                }
            ],
        }
        store.write_state(state)
    return {
        "schema": "chiron.mirror-restore/1",
        "store": str(store.root),
        "name": report.name,
        "version": report.version,
        "metadata_version": number,
        "next_version": number + 1,
        "wheels": sum(1 for m in layout.members if m.name.startswith("wheels/")),
        "image_blobs": sum(1 for m in layout.members if m.name.startswith(f"{_images.PREFIX}blobs/")),
        "spec": str(spec_path),
        "keys": state["keys"],
        "notices": report.notices,
    }


def status(store_dir: Path) -> dict[str, Any]:
    """What a store holds: the appliance, its versions, and the artifacts on disk."""
    store = Store(store_dir.absolute())
    state = store.state()
    if state is None:
        raise UsageError(f"{store.root}: not a mirror store (no state.json)", hint="run chiron mirror refresh first")
    wheels = list(store.artifacts.glob("sha256/*/*"))
    blobs = list(store.oci.glob("blobs/sha256/*"))
    return {
        "schema": "chiron.mirror-status/1",
        "store": str(store.root),
        "name": state["name"],
        "spec": state["spec"],
        "keys": state["keys"],
        "latest": state["versions"][-1],
        "versions": [v["metadata_version"] for v in state["versions"]],
        "artifacts": len(wheels),
        "artifact_bytes": sum(p.stat().st_size for p in wheels),
        "image_blobs": len(blobs),
        "image_bytes": sum(p.stat().st_size for p in blobs),
    }


def prune(store_dir: Path, keep: int) -> dict[str, Any]:
    """Drop all but the newest ``keep`` appliances, and the artifacts and image blobs only they used.

    The lock history and the version list stay (locks are small and are the record of what was
    shipped); pruned versions are marked ``"pruned": true``. Content is kept by sha256 if any kept
    appliance signs it as a target, so a kept appliance can always be rebuilt from the store.
    """
    from chiron.archive.delta import base_content

    if keep < 1:
        raise UsageError("--keep must be at least 1: the newest appliance is what the next delta is made from")
    store = Store(store_dir.absolute())
    with store.locked("mirror prune"):
        state = store.state()
        if state is None:
            raise UsageError(f"{store.root}: not a mirror store (no state.json)")
        versions = state["versions"]
        for v in versions:  # a file an interrupted prune already removed: record it as pruned
            if not v.get("pruned") and not (store.root / v["file"]).is_file() and v is not versions[-1]:
                v["pruned"] = True
        live = [v for v in versions if not v.get("pruned")]
        drop, kept = live[:-keep], live[-keep:]
        needed: set[str] = set()
        for v in kept:
            needed |= base_content(store.root / v["file"])
        doomed = [store.root / (v["file"] + suffix) for v in drop for suffix in ("", ".sig")]
        doomed += [(store.root / v["file"]).with_suffix(".delta") for v in drop]
        content = [
            f for f in [*store.artifacts.glob("sha256/*/*"), *store.oci.glob("blobs/sha256/*")] if f.name not in needed
        ]
        doomed += content
        for record in store.artifacts.glob("tool/*.json"):
            if json.loads(record.read_text()).get("sha256") not in needed:
                doomed += [record.with_suffix(".zip"), record]
        # Record first, delete after: an interrupted prune leaves files to remove, never a state or an
        # OCI index that names what is gone.
        for v in drop:
            v["pruned"] = True
        store.write_state(state)
        _prune_oci_index(store.oci, needed)
        freed = 0
        for f in doomed:
            if f.is_file():
                freed += f.stat().st_size
                f.unlink()
    return {
        "schema": "chiron.mirror-prune/1",
        "store": str(store.root),
        "kept": [v["metadata_version"] for v in kept],
        "pruned": [v["metadata_version"] for v in drop],
        "files_removed": len(content),
        "bytes_freed": freed,
    }


def _prune_oci_index(layout: Path, keep: set[str]) -> None:
    """Keep only index.json entries whose manifest stays, so the layout stays valid for skopeo."""
    index_file = layout / "index.json"
    if not index_file.is_file():
        return
    index = json.loads(index_file.read_text())
    index["manifests"] = [m for m in index.get("manifests", []) if m["digest"].partition(":")[2] in keep]
    write_atomic(index_file, json.dumps(index).encode())
