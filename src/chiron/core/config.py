"""Where settings come from, without pydantic: the keys, the files, the environment, and which layer wins.

Precedence, lowest first: built-in defaults < the system file (``/etc/chiron/config.toml``) < the user's
file (``$XDG_CONFIG_HOME/chiron/config.toml``, default ``~/.config``) < ``CHIRON_*`` environment
variables < the command's options. ``CHIRON_SYSTEM_CONFIG`` names another system file (empty: none);
``CHIRON_CONFIG`` or the global ``--config FILE`` name another user file (one that must exist).

This module reads the layers with tomllib only (start-up time: pydantic costs ~0.2 s to import), and
answers "is anything configured at all?": when nothing is, a command takes the built-in defaults and
never builds the typed model. ``chiron.core.settings`` is the typed model (pydantic-settings) that
validates the layers and says where each effective value came from. docs/config.md lists every key.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.errors import UsageError

SYSTEM_FILE = Path("/etc/chiron/config.toml")
FLAG_ENV_PREFIX = "CHIRON_FLAG_"
MAX_FILE = 1 << 20  # a settings file is small; a bigger one is a mistake (or a device), not a config


@dataclass(frozen=True)
class Key:
    """One setting: its section and name in the file, default, environment variable and option."""

    section: str
    name: str
    default: Any
    env: str | None
    option: str | None
    help: str
    kind: str = "value"  # "paths": a list of paths, os.pathsep-separated in the environment

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _k(
    section: str, name: str, default: Any, env: str | None, option: str | None, text: str, kind: str = "value"
) -> Key:
    return Key(section, name, default, env, option, text, kind)


# Every setting. chiron.core.settings gives each its type; tests/unit/test_config.py checks that the two agree.
KEYS: dict[str, Key] = {
    k.dotted: k
    for k in (
        _k("host", "prefix", Path("/opt/chiron"), "CHIRON_PREFIX", "--prefix", "where releases live"),
        _k("host", "state_dir", None, "CHIRON_STATE_DIR", "--state-dir", "host state (unset: PREFIX/state)"),
        _k("host", "installer", "auto", "CHIRON_INSTALLER", "--installer", "auto, uv or pip"),
        _k("host", "images", "load", "CHIRON_IMAGES", "--images", "load, push or skip"),
        _k("host", "registry", None, "CHIRON_REGISTRY", "--registry", "registry HOST[:PORT][/PREFIX] to push to"),
        _k("host", "wait", 0.0, "CHIRON_WAIT", "--wait", "seconds to wait for another operation's lock"),
        _k("mirror", "store", Path("mirror"), "CHIRON_STORE", "--store", "the mirror store directory"),
        _k("mirror", "tool_wheels", None, "CHIRON_TOOL_WHEELS", "--tool-wheels", "chiron's own wheels"),
        _k("mirror", "cache_dir", None, "CHIRON_CACHE_DIR", "--cache-dir", "artifact cache (unset: XDG cache)"),
        _k("telemetry", "log_format", "human", "CHIRON_LOG_FORMAT", "--log-format", "human or json"),
        _k("telemetry", "trace_file", None, "CHIRON_TRACE_FILE", "--trace-file", "OpenTelemetry JSON lines file"),
        _k("serve", "host", "127.0.0.1", "CHIRON_SERVE_HOST", "--host", "address chiron serve listens on"),
        _k("serve", "port", 8443, "CHIRON_SERVE_PORT", "--port", "port chiron serve listens on"),
        _k("serve", "db", Path("/var/lib/chiron-serve/serve.db"), "CHIRON_SERVE_DB", "--db", "service database"),
        _k("serve", "certfile", None, "CHIRON_SERVE_CERTFILE", "--certfile", "TLS certificate (PEM)"),
        _k("serve", "keyfile", None, "CHIRON_SERVE_KEYFILE", "--keyfile", "TLS private key (PEM)"),
        _k("serve", "anonymous_read", False, "CHIRON_SERVE_ANONYMOUS_READ", "--anonymous-read", "read without token"),
        _k("mcp", "allow_paths", [], "CHIRON_MCP_ALLOW_PATHS", "--allow-path", "roots MCP may touch", "paths"),
        _k("mcp", "docs", None, "CHIRON_MCP_DOCS", "--docs", "runbooks directory (unset: the packaged ones)"),
        _k("openfeature", "provider", None, "CHIRON_OPENFEATURE_PROVIDER", None, "MODULE:FACTORY of a provider"),
        _k("openfeature", "options", {}, None, None, "keyword arguments for the provider factory"),
    )
}
SECTIONS = (*dict.fromkeys(k.section for k in KEYS.values()), "flags")
ENV_KEYS = {k.env: k for k in KEYS.values() if k.env}


@dataclass(frozen=True)
class Layer:
    """One source of settings: ``kind`` is system, user, env or option; ``label`` names it for people
    (the file's path, ``$VAR``, ``--option``); ``data`` is nested like the file ({section: {key: value}});
    ``origins`` names where each dotted key came from within the layer (an environment variable, an option)."""

    kind: str
    label: str
    data: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, dotted: str) -> str:
        return self.origins.get(dotted, self.label)


def user_file(config: Path | None = None) -> tuple[Path | None, bool]:
    """The user's settings file and whether it must exist (named by --config or CHIRON_CONFIG)."""
    if config is not None:
        return config, True
    if os.environ.get("CHIRON_CONFIG"):
        return Path(os.environ["CHIRON_CONFIG"]), True
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chiron" / "config.toml", False


def system_file() -> Path | None:
    """The system file; CHIRON_SYSTEM_CONFIG names another, and set but empty means none."""
    if "CHIRON_SYSTEM_CONFIG" in os.environ:
        given = os.environ["CHIRON_SYSTEM_CONFIG"]
        return Path(given) if given else None
    return SYSTEM_FILE


def read_file(path: Path, kind: str, *, required: bool) -> Layer | None:
    """A settings file as a layer; None when it does not exist and need not. A file that cannot be read
    or is not TOML is a usage error naming it (exit 2)."""
    try:
        if not path.is_file():
            if path.exists():
                raise UsageError(f"{path}: settings file is not a regular file")
            if required:
                raise UsageError(f"{path}: settings file not found", hint="check --config / CHIRON_CONFIG")
            return None
        with path.open("rb") as f:
            raw = f.read(MAX_FILE + 1)
    except PermissionError:
        raise UsageError(f"{path}: settings file cannot be read (permission denied)") from None
    except OSError as exc:
        raise UsageError(f"{path}: settings file cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE:
        raise UsageError(f"{path}: settings file is larger than {MAX_FILE} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: settings file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    return Layer(kind, str(path), data)


def env_layer(environ: dict[str, str] | None = None) -> Layer | None:
    """The CHIRON_* variables that name a setting or a flag (CHIRON_FLAG_NAME sets flags.name)."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for var in sorted(environ):
        value = environ[var]
        if var in ENV_KEYS:
            key = ENV_KEYS[var]
            parsed: Any = [p for p in value.split(os.pathsep) if p] if key.kind == "paths" else value
            data.setdefault(key.section, {})[key.name] = parsed
            origins[key.dotted] = f"${var}"
        elif var.startswith(FLAG_ENV_PREFIX) and len(var) > len(FLAG_ENV_PREFIX):
            name = var.removeprefix(FLAG_ENV_PREFIX).lower()
            data.setdefault("flags", {})[name] = value
            origins[f"flags.{name}"] = f"${var}"
    return Layer("env", "environment", data, origins) if data else None


def option_layer(given: dict[str, Any]) -> Layer | None:
    """The options a command was given, by dotted key (None: not given)."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for dotted, value in given.items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        data.setdefault(section, {})[name] = value
        key = KEYS.get(dotted)
        origins[dotted] = key.option if key is not None and key.option else f"--set {dotted}"
    return Layer("option", "command line", data, origins) if data else None


def read_layers(config: Path | None = None, environ: dict[str, str] | None = None) -> list[Layer]:
    """The configured layers, lowest precedence first: system file, user file, environment."""
    layers: list[Layer | None] = []
    system = system_file()
    if system is not None:
        layers.append(read_file(system, "system", required=False))
    user, required = user_file(config)
    if user is not None:
        layers.append(read_file(user, "user", required=required))
    layers.append(env_layer(environ))
    return [layer for layer in layers if layer is not None]


def configured(layers: list[Layer], sections: tuple[str, ...] | None = None) -> bool:
    """Whether any layer sets anything (in one of ``sections``, if given): if not, the defaults apply
    and the typed model need not be built."""
    for layer in layers:
        if sections is None and layer.data:
            return True
        if sections is not None and any(s in layer.data for s in sections):
            return True
    return False


def defaults() -> dict[str, Any]:
    """Every setting's built-in default, by dotted key (lists and tables copied)."""
    return {d: copy.copy(k.default) for d, k in KEYS.items()}
