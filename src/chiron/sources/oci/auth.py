"""Registry credentials from the files Docker, Podman and skopeo keep them in, and their helpers.

The files are searched in the order the containers tools use (``--authfile`` alone when given):
``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``), then Docker's ``$DOCKER_CONFIG/config.json``
(``~/.docker/config.json``). The first file that names the registry host (in ``auths``, ``credHelpers``
or ``credsStore``) decides. oras-py resolves the entry, running a credential helper
(``docker-credential-NAME get``) where the file names one. Credentials never come from a command line,
which every local user can read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import oras.auth

from chiron.core.fs import read_small
from chiron.errors import EnvironmentProblem, UsageError

MAX_AUTH_FILE = 1 << 20

# oras-py logs a helper's failure as a warning on stderr and carries on; chiron reports it itself.
logging.getLogger("oras.logger").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Credentials:
    """What a registry host is answered with: base64 ``USER:PASSWORD`` (or none), and where from."""

    basic: str | None = None
    source: str = ""
    searched: tuple[Path, ...] = field(default_factory=tuple)


def auth_files(explicit: Path | None) -> list[Path]:
    """The auth files to look in, in order."""
    if explicit is not None:
        return [explicit]
    env, home = os.environ, Path.home()
    out = []
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    out.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json")
    out.append(Path(env.get("DOCKER_CONFIG") or home / ".docker") / "config.json")
    return out


def _host_of(key: str) -> str:
    """An ``auths`` key as the bare host (Docker also writes ``https://HOST/v1/``)."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(read_small(path, MAX_AUTH_FILE, "auth file"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"auth file {path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"auth file {path}: not a JSON object")
    auths = {} if doc.get("auths") is None else doc["auths"]
    helpers = {} if doc.get("credHelpers") is None else doc["credHelpers"]
    if not isinstance(auths, dict) or not isinstance(helpers, dict):
        raise UsageError(f"auth file {path}: 'auths' and 'credHelpers' must be objects")
    return {
        "auths": {_host_of(str(k)): v for k, v in auths.items() if isinstance(v, dict)},
        "credHelpers": {_host_of(str(k)): str(v) for k, v in helpers.items()},
        "credsStore": doc.get("credsStore") if isinstance(doc.get("credsStore"), str) else None,
    }


def _names(host: str) -> list[str]:
    """The host as an auth file may spell it (localhost and 127.0.0.1 are the same registry)."""
    names = [host]
    if host.startswith("localhost"):
        names.append(host.replace("localhost", "127.0.0.1", 1))
    elif host.startswith("127.0.0.1"):
        names.append(host.replace("127.0.0.1", "localhost", 1))
    return names


def load_credentials(host: str, explicit: Path | None) -> Credentials:
    """The credentials for ``host`` from the first auth file that names it; none when no file does."""
    if explicit is not None and not explicit.is_file():
        raise UsageError(f"--authfile {explicit}: no such file")
    searched = tuple(p for p in auth_files(explicit) if p.is_file())
    for path in searched:
        config = _read(path)
        for name in _names(host):
            entry = config["auths"].get(name) or {}
            helper = config["credHelpers"].get(name) or (config["credsStore"] if not entry.get("auth") else None)
            if not entry.get("auth") and not helper:
                continue
            if helper and not entry.get("auth") and shutil.which(f"docker-credential-{helper}") is None:
                raise EnvironmentProblem(
                    f"auth file {path}: names the credential helper docker-credential-{helper} for {name}, "
                    "which is not installed",
                    hint="install the helper, or log in again so that the file holds the credentials",
                )
            backend = oras.auth.TokenAuth()
            backend._auth_config = config  # the file as read (and checked) here: one file, not a merge
            if backend._load_auth(name):
                via = f"auth file {path}"
                if helper and not entry.get("auth"):
                    via = f"credential helper docker-credential-{helper} (named in {path})"
                return Credentials(str(backend._basic_auth), via, searched)
            if name in config["credHelpers"]:  # a store for every host may just not know this one
                raise EnvironmentProblem(
                    f"credential helper docker-credential-{helper} (named in {path}) gave no credentials for {name}",
                    hint="log in again with docker login / podman login",
                )
    return Credentials(None, "", searched)
