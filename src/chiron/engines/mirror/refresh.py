"""One refresh run, in named steps: begin (state, spec, policy, clocks), resolve, fetch, check the
policy, the root chain and version number, the tool, compare with the newest version, then build and
commit (``state.json`` written last).

Versions: each refresh signs metadata version N+1, and the appliance version ``SPEC_VERSION+N`` (a
PEP 440 local segment), so every release tells itself apart and sorts above the one before it. After
a key rotation (the spec's root chain is longer than the one the store last signed with) the version
is at least the current time in seconds: a ``chiron build`` that shipped the rotation first signed its
build time, and hosts that installed it must accept this refresh.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chiron.archive import delta
from chiron.archive.layout import TOOL_TARGET
from chiron.core import progress as _progress
from chiron.core import telemetry as _telemetry
from chiron.core.clock import iso, parse_iso, utc_from_epoch
from chiron.core.fs import sha256_file, write_atomic
from chiron.core.models import parse_duration
from chiron.core.spec import LoadedSpec
from chiron.core.storestate import StoreState
from chiron.engines import policy
from chiron.engines.build import BuildOptions, build, check_validity, image_refs, source_date_epoch
from chiron.engines.verify import verified
from chiron.errors import PolicyViolation, SpecError, UsageError, VerificationError
from chiron.sources import images as _images
from chiron.sources import lock as _lock
from chiron.sources.cache import ArtifactCache
from chiron.sources.tool import ToolFormat, platforms_for
from chiron.sources.toolcache import ToolZip, cached_tool_zip, tool_members_of
from chiron.trust import metadata as _trust

from .commit import commit, unchanged
from .model import FetchedRun, RefreshOptions, RefreshResult, Run, content_key, load, release_version
from .resolve import resolve_lock
from .store import Store, check_same_trust


def refresh(opts: RefreshOptions) -> RefreshResult:
    """One refresh run (see the module docstring); raises PolicyViolation before building anything."""
    store = Store(opts.store.absolute())
    with store.locked("mirror refresh"), _telemetry.span("chiron.mirror.refresh", store=str(store.root)) as sp:
        run = begin(store, opts, time.monotonic())
        lock, pages = resolve_lock(store, run.loaded, run.latest)
        fetched, packed, new_blobs = fetch(run, lock)
        check_policy(run, lock, fetched, sp)
        pylock = _lock.write_pylock(lock, run.loaded.spec)
        chain = run.chain
        number = next_version(run)
        recorded = [i.as_dict() for i in packed]
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix=".tool-", dir=store.root))
            tool, fmt = tool_for(run, chain, Path(work))
            key = content_key(
                spec=run.loaded.raw,
                pylock=pylock,
                images=recorded,
                files=files_of(run.loaded, run.files_dir),
                root=chain[-1],
                tool_sha256=tool.sha256,
            )
            latest = run.latest
            same = latest is not None and key == latest.content_key and not opts.force
            renew = renewal(run) if same else None
            if latest is not None and same and renew is None:
                _telemetry.set_attr(sp, result="unchanged", downloaded=fetched.stats.downloaded)
                return unchanged(run, latest, fetched.stats, new_blobs)
            run.notes += [renew] if renew else []
            pending = store.locks / ".pending.pylock.toml"
            write_atomic(pending, pylock)
            spec = run.loaded.spec
            out = store.appliances / f"{spec.appliance.name}-{spec.appliance.version}-{number}.{_ext(fmt)}"
            built = build(
                BuildOptions(
                    spec=run.spec_path,
                    output=out,
                    tool_wheels=opts.tool_wheels or store.root,
                    cache_dir=store.artifacts,
                    tool_format=fmt,
                    source_date_epoch=run.built_at,
                    metadata_version=number,
                    show_progress=opts.show_progress,
                    base_dir=run.base,
                    root_chain=run.root_path if run.state and run.state.root and opts.spec is None else None,
                    lock_file=pending,
                    files_dir=run.files_dir,
                    tool=tool,
                    images=(store.oci, recorded) if packed else None,
                    appliance_version=release_version(spec.appliance.version, number),
                    check_store=False,
                )
            )
        result = commit(run, built, number, key, pages, fetched.stats, new_blobs)
        _telemetry.set_attr(sp, result="built", version=number, downloaded=fetched.stats.downloaded)
        _telemetry.count("chiron.mirror.downloads", fetched.stats.downloaded)
        return result


def _ext(fmt: ToolFormat) -> str:
    return "pex" if fmt == "pex" else "pyz"


def begin(store: Store, opts: RefreshOptions, started: float) -> Run:
    """The state, the spec and its policy, and every check that needs nothing fetched: before this
    returns, nothing is written but the sweep of what killed runs left."""
    state = store.state()
    store.sweep(state)
    spec_path = opts.spec or (Path(state.spec) if state else None)
    if spec_path is None:
        raise UsageError(f"{store.root}: a new store needs the SPEC argument (later runs remember it)")
    base = opts.base_dir or (Path(state.base) if state and state.base else None)
    files_dir = Path(state.files_dir) if state and state.files_dir and opts.spec is None else None
    loaded = load(spec_path.absolute(), base)
    spec = loaded.spec
    if state and state.name != spec.appliance.name:
        raise UsageError(
            f"{store.root} holds appliance '{state.name}', {spec_path} builds '{spec.appliance.name}'",
            hint="use one store per appliance",
        )
    policy_path = policy_file(opts, spec_path, state)
    rules = policy.load(policy_path)
    if policy_path is None:
        # No policy file: only what the spec itself asks for (no yanked releases; sdists if allowed).
        defaults = policy.Policy(sources=policy.SourceRules(sdists=spec.python.allow_sdists))
        rules = policy.LoadedPolicy(defaults, None, {})
    if opts.delta_from is not None:
        delta.base_content(opts.delta_from)  # a wrong --delta-from fails now, not after the build
    epoch = source_date_epoch(opts.source_date_epoch)
    root_path = (
        Path(state.root)
        if state and state.root and opts.spec is None
        else loaded.resolve_path(spec.trust.root, "trust.root")
    )
    run = Run(
        store, opts, state, loaded, spec_path, base, files_dir, root_path, rules, policy_path,
        epoch if epoch is not None else int(time.time()), started,
    )  # fmt: skip
    run.chain = _trust.load_root_chain(root_path)
    run.signed_with = check_same_trust(store, run.chain)
    run.warnings += check_validity(
        spec, _trust.parse_root(run.chain[-1], "root").signed, utc_from_epoch(run.built_at), datetime.now(UTC)
    )
    run.warnings += clock_warnings(run)
    return run


def policy_file(opts: RefreshOptions, spec_path: Path, state: StoreState | None) -> Path | None:
    """--policy, else the policy the store was refreshed with, else policy.toml beside the spec.

    A store that had a policy never silently runs without it: a recorded policy that has gone is an
    error, not a fallback to the defaults.
    """
    if opts.policy is not None:
        return opts.policy
    if state and state.policy:
        if not Path(state.policy).is_file():
            raise SpecError(
                f"{state.policy}: the policy this store was refreshed with is missing",
                hint="restore it, or pass --policy FILE to use another one",
            )
        return Path(state.policy)
    beside = spec_path.absolute().parent / "policy.toml"
    return beside if beside.is_file() else None


def clock_warnings(run: Run) -> list[str]:
    """The build time against the newest version this store signed: a clock behind it, or so far
    ahead that every appliance the store signed has expired, is most likely wrong, and hosts move
    their time floor to the signed time of what they install."""
    latest = run.latest
    if latest is None or latest.created is None:
        return []
    try:
        last = int(parse_iso(latest.created).timestamp())
    except ValueError:
        return []
    when = iso(utc_from_epoch(run.built_at))
    if run.built_at < last:
        return [
            f"the build time {when} is before version {latest.metadata_version} was signed ({latest.created}): "
            "is the clock (or SOURCE_DATE_EPOCH) behind?"
        ]
    longest = max(r.expires_seconds for r in run.loaded.spec.trust.roles.values())
    if run.built_at - last > longest:
        days = (run.built_at - last) // 86400
        return [
            f"the build time {when} is {days} days after version {latest.metadata_version} was signed "
            f"({latest.created}), longer than any role's validity: if the clock is ahead, every host that "
            f"installs this appliance moves its time floor to {when} and refuses metadata that expires before"
        ]
    return []


def fetch(run: Run, lock: _lock.Lock) -> tuple[FetchedRun, list[_images.PackedImage], dict[str, int]]:
    """Every artifact the store lacks (hashes measured into the lock), and every image into the
    store's OCI layout. Returns the fetch, the packed images and the image blobs new in the store."""
    cache = ArtifactCache(run.store.artifacts)
    arts = lock.artifacts()
    with _progress.bar(sum(a.size or 0 for a in arts), "fetching", enabled=run.opts.show_progress) as bar:
        got = cache.fetch_all(arts, progress=bar.advance)
    _lock.fill_hashes(lock, got.measured)
    before = _blob_sizes(run.store.oci)
    packed = _images.fetch(image_refs(run.loaded), run.store.oci)
    new_blobs = {d: n for d, n in _blob_sizes(run.store.oci).items() if d not in before}
    return FetchedRun(got, cache.stats), packed, new_blobs


def _blob_sizes(layout: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in layout.glob("blobs/sha256/*")}


def check_policy(run: Run, lock: _lock.Lock, fetched: FetchedRun, sp: Any) -> None:
    violations = policy.check(run.rules, lock, fetched.got.paths)
    if violations:
        _telemetry.set_attr(sp, result="policy")
        where = str(run.policy_path or "(defaults)")
        raise PolicyViolation(violations, [v.as_dict() for v in violations], where)
    run.accepted = policy.accepted_advisories(run.rules, lock)  # recorded with the version (commit)


def next_version(run: Run) -> int:
    """N+1; a new store's first is its build time. After a rotation, at least now (see the module
    docstring): the spec's chain has root versions the store never signed with."""
    latest, chain = run.latest, run.chain
    if latest is None:
        return run.built_at
    number = latest.metadata_version + 1
    if 0 < run.signed_with < len(chain):
        # A build in this very second signed at most now: one above it.
        floor = max(run.built_at, int(time.time()) + 1)
        if floor > number:
            run.notes.append(
                f"root version {len(chain)} is new to this store: signed as version {floor} (the time), above "
                "any appliance chiron build may have shipped the rotation with"
            )
        number = max(number, floor)
    return number


def tool_for(run: Run, chain: list[bytes], work: Path) -> tuple[ToolZip, ToolFormat]:
    """The tool zip: built from --tool-wheels (cached), else the one the store's newest appliance
    carries, taken only after that appliance verifies against the spec's root."""
    opts, spec = run.opts, run.loaded.spec
    if opts.tool_wheels is not None:
        platforms, notes = platforms_for(opts.tool_format, spec.environments)
        run.notes += notes
        tool = cached_tool_zip(
            fmt=opts.tool_format,
            wheels=opts.tool_wheels,
            shebang="/usr/bin/env python3",
            platforms=platforms,
            cache_dir=run.store.artifacts,
            work=work,
        )
        run.notes += [tool.note] if tool.note else []
        return tool, opts.tool_format
    latest = run.latest
    if latest is None or not (run.store.root / latest.file).is_file():
        raise UsageError(
            "no --tool-wheels given, and the store holds no appliance whose tool could be signed again",
            hint="pass --tool-wheels DIR (chiron's own wheel and its dependencies) or set CHIRON_TOOL_WHEELS",
        )
    path = run.store.root / latest.file
    created = parse_iso(latest.created or "1970-01-01T00:00:00Z")
    # As of its own signing time: the tool is what was signed, whether or not its metadata expired since.
    with verified(path, root_sha256=_trust.fingerprint(chain[0]), reference_time=created + timedelta(seconds=1)) as r:
        if not r.ok:
            raise VerificationError(
                [f"{path}: {r.problems[0]}"], hint="pass --tool-wheels DIR to build the tool instead of reusing it"
            )
        r.verified.copy(TOOL_TARGET, work / "tool.zip")
        fmt = r.verified.layout.tool_format
    zip_path = work / "tool.zip"
    run.notes.append(f"no --tool-wheels: the tool of version {latest.metadata_version} is reused")
    return ToolZip(zip_path, sha256_file(zip_path), tool_members_of(zip_path)), "shiv" if fmt == "shiv" else "pex"


def files_of(loaded: LoadedSpec, files_dir: Path | None) -> dict[str, str]:
    out = {}
    for i, f in enumerate(loaded.spec.files):
        src = files_dir / f.dest if files_dir else loaded.resolve_path(f.src, f"files[{i}].src")
        out[f.dest] = sha256_file(src) if src.is_file() else ""
    return out


def renewal(run: Run) -> str | None:
    """Why the same content must be signed again: a role of the newest metadata has less than half
    its validity left, or less than the spec's carry interval (hosts refuse expired metadata, and a
    quiet upstream must not starve them)."""
    spec = run.loaded.spec
    carry = parse_duration(spec.trust.carry_interval) if spec.trust.carry_interval else 0
    for role in ("timestamp", "snapshot", "targets"):
        try:
            signed = json.loads((run.store.tuf / f"{role}.json").read_text())["signed"]
            expires = parse_iso(signed["expires"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        validity = spec.trust.roles[role].expires_seconds
        # A carry interval the validity cannot cover is warned about; renewing on every run would not help.
        window = timedelta(seconds=max(validity / 2, carry) if carry < validity else validity / 2)
        if expires - datetime.now(UTC) <= window:
            return (
                f"renewed: version {signed['version']}'s {role} metadata expires {signed['expires']}; "
                "same content re-signed"
            )
    return None
