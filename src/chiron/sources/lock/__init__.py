"""The lock pipeline, split by job: the model, tags per environment, resolution with pip, and the
lock files (pylock.toml and requirements). Importers use this package's names."""

from chiron.sources.lock.load import load_lock
from chiron.sources.lock.model import Artifact, Lock, LockedPackage
from chiron.sources.lock.pylock import (
    check_fits,
    parse_pylock,
    read_pylock,
    requirements_txt,
    write_pylock,
)
from chiron.sources.lock.resolve import fill_hashes, resolve
from chiron.sources.lock.tags import env_platforms, env_tags, expand_platform, marker_env, requirements_for

__all__ = [
    "Artifact",
    "Lock",
    "LockedPackage",
    "check_fits",
    "env_platforms",
    "env_tags",
    "expand_platform",
    "fill_hashes",
    "load_lock",
    "marker_env",
    "parse_pylock",
    "read_pylock",
    "requirements_for",
    "requirements_txt",
    "resolve",
    "write_pylock",
]
