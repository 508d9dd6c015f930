"""What an appliance says about itself, as typed values: ``appliance.json`` (the manifest) and the
packages of ``lock/pylock.toml``.

verify reads the manifest after checking its hash; inspect, diff and doctor read both without
verifying. Either way they are parsed here into checked types: a member of the wrong shape (a list,
a number where a name belongs, TOML nested a thousand deep) is a FormatError naming the field, never
a crash further on. Fields beyond these are kept in ``raw`` (a later chiron may add some); those
here must have these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from chiron.core.text import parse_json, plain
from chiron.errors import FormatError

MANIFEST = "appliance.json"
MAX_MANIFEST = 16 << 20

T = TypeVar("T")


@dataclass(frozen=True)
class ManifestEnvironment:
    name: str
    python_version: str
    implementation: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class ManifestImage:
    ref: str
    digest: str
    platforms: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    created: str
    chiron_version: str
    tool_format: str
    environments: tuple[ManifestEnvironment, ...]
    images: tuple[ManifestImage, ...]
    images_shared_bytes: int
    signers: dict[str, tuple[str, ...]]
    raw: dict[str, Any]


def parse_manifest(data: bytes, where: str = MANIFEST) -> Manifest:
    """The manifest in ``data``; FormatError naming ``where`` and the field when it is malformed."""
    try:
        raw = parse_json(data, where)
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: is {type(raw).__name__}, not a JSON object")
        return Manifest(
            name=_get(raw, "name", str, where),
            version=_get(raw, "version", str, where),
            description=_get(raw, "description", str, where, ""),
            created=_get(raw, "created", str, where, ""),
            chiron_version=_get(raw, "chiron_version", str, where, ""),
            tool_format=_get(raw, "tool_format", str, where, ""),
            environments=tuple(
                _environment(e, f"{where}: environments[{i}]")
                for i, e in enumerate(_get(raw, "environments", list, where, []))
            ),
            images=tuple(
                _image(e, f"{where}: images[{i}]") for i, e in enumerate(_get(raw, "images", list, where, []))
            ),
            images_shared_bytes=_get(raw, "images_shared_bytes", int, where, 0),
            signers={
                str(role): _strings(schemes, f"{where}: signers.{plain(str(role))}")
                for role, schemes in _get(raw, "signers", dict, where, {}).items()
            },
            raw=raw,
        )
    except ValueError as exc:
        raise FormatError(str(exc)) from None


def _get(obj: dict[str, Any], key: str, kind: type[T], where: str, default: T | None = None) -> T:
    if key not in obj:
        if default is None:
            raise ValueError(f"{where}: has no {key}")
        return default
    value = obj[key]
    # bool is an int to Python, not to a manifest
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {key} is {type(value).__name__}, not {kind.__name__}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: is not a list of strings")
    return tuple(value)


def _environment(value: Any, where: str) -> ManifestEnvironment:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: is not an object")
    return ManifestEnvironment(
        name=_get(value, "name", str, where),
        python_version=_get(value, "python_version", str, where),
        implementation=_get(value, "implementation", str, where, "cp"),
        platforms=_strings(_get(value, "platforms", list, where), f"{where}.platforms"),
    )


def _image(value: Any, where: str) -> ManifestImage:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: is not an object")
    return ManifestImage(
        ref=_get(value, "ref", str, where),
        digest=_get(value, "digest", str, where),
        platforms=_strings(_get(value, "platforms", list, where, []), f"{where}.platforms"),
        size=_get(value, "size", int, where, 0),
    )


# ---------------------------------------------------------------- the lock, as inspect and diff read it

LOCK = "lock/pylock.toml"
MAX_LOCK = 64 << 20


@dataclass(frozen=True)
class LockedFile:
    name: str
    size: int


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    wheels: tuple[LockedFile, ...]
    sdist: LockedFile | None


@dataclass(frozen=True)
class LockSummary:
    """What an appliance's ``lock/pylock.toml`` pins: packages with their files, and the pins of each
    environment (``tool.chiron.environments``: environment -> ``name==version`` lines)."""

    packages: tuple[LockedPackage, ...]
    environments: dict[str, tuple[str, ...]]


def parse_lock_summary(data: bytes, where: str = LOCK) -> LockSummary:
    """The lock's packages and environments; FormatError naming ``where`` and the entry when malformed."""
    import tomllib

    try:
        try:
            lock = tomllib.loads(data.decode())
        except RecursionError:
            raise ValueError(f"{where}: TOML nested too deeply") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{where}: not a valid TOML lock: {exc}") from None
        tool = _get(_get(lock, "tool", dict, where, {}), "chiron", dict, f"{where}: tool", {})
        envs = _get(tool, "environments", dict, f"{where}: tool.chiron", {})
        return LockSummary(
            packages=tuple(
                _package(p, f"{where}: packages[{i}]") for i, p in enumerate(_get(lock, "packages", list, where, []))
            ),
            environments={
                str(env): _strings(pins, f"{where}: tool.chiron.environments.{plain(str(env))}")
                for env, pins in envs.items()
            },
        )
    except ValueError as exc:
        raise FormatError(str(exc)) from None


def _package(value: Any, where: str) -> LockedPackage:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: is not a table")
    sdist = value.get("sdist")
    return LockedPackage(
        name=_get(value, "name", str, where),
        version=_get(value, "version", str, where),
        wheels=tuple(_file(w, f"{where}.wheels[{j}]") for j, w in enumerate(_get(value, "wheels", list, where, []))),
        sdist=_file(sdist, f"{where}.sdist") if sdist is not None else None,
    )


def _file(value: Any, where: str) -> LockedFile:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: is not a table")
    return LockedFile(name=_get(value, "name", str, where), size=_get(value, "size", int, where, 0))
