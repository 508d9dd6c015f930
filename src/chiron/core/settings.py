"""The typed settings model (pydantic-settings) and where each effective value came from.

``chiron.core.config`` reads the layers (files, environment, options) with tomllib; here each layer is
checked on its own, so that an unknown key or a wrong type is one line naming the file (or the variable,
or the option) and the key, and then the layers are merged by pydantic-settings in their precedence
order: options > environment > user file > system file > defaults.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from chiron.core.config import KEYS, Layer, read_layers
from chiron.errors import UsageError

FlagValue = bool | int | float | str


def _d(dotted: str) -> Any:
    """The built-in default of a key (one table: chiron.core.config.KEYS)."""
    default = KEYS[dotted].default
    return Field(default_factory=lambda: type(default)(default)) if isinstance(default, list | dict) else default


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSettings(_Section):
    """``[host]``: what install, upgrade, rollback, status, doctor, audit and images act on."""

    prefix: Path = _d("host.prefix")
    state_dir: Path | None = _d("host.state_dir")
    installer: Literal["auto", "uv", "pip"] = _d("host.installer")
    images: Literal["load", "push", "skip"] = _d("host.images")
    registry: str | None = _d("host.registry")
    wait: float = Field(default=_d("host.wait"), ge=0)


class MirrorSettings(_Section):
    """``[mirror]``: the store and the inputs of builds and refreshes."""

    store: Path = _d("mirror.store")
    tool_wheels: Path | None = _d("mirror.tool_wheels")
    cache_dir: Path | None = _d("mirror.cache_dir")


class TelemetrySettings(_Section):
    """``[telemetry]``: messages on stderr and the trace file."""

    log_format: Literal["human", "json"] = _d("telemetry.log_format")
    trace_file: Path | None = _d("telemetry.trace_file")


class ServeSettings(_Section):
    """``[serve]``: where ``chiron serve`` listens and what it keeps."""

    host: str = _d("serve.host")
    port: int = Field(default=_d("serve.port"), ge=1, le=65535)
    db: Path = _d("serve.db")
    certfile: Path | None = _d("serve.certfile")
    keyfile: Path | None = _d("serve.keyfile")
    anonymous_read: bool = _d("serve.anonymous_read")


class McpSettings(_Section):
    """``[mcp]``: the roots MCP tools may read and write, and where the runbooks are."""

    allow_paths: list[Path] = _d("mcp.allow_paths")
    docs: Path | None = _d("mcp.docs")


class OpenFeatureSettings(_Section):
    """``[openfeature]``: a site's own provider (``MODULE:FACTORY``), called with ``options``."""

    provider: str | None = Field(default=_d("openfeature.provider"), pattern=r"^[\w.]+:[\w.]+$")
    options: dict[str, Any] = _d("openfeature.options")


class _Flags(BaseModel):
    """``[flags]``: a value per flag (chiron.core.flags says which flags there are and their types)."""

    flags: dict[str, FlagValue]


SECTION_MODELS: dict[str, type[_Section]] = {
    "host": HostSettings,
    "mirror": MirrorSettings,
    "telemetry": TelemetrySettings,
    "serve": ServeSettings,
    "mcp": McpSettings,
    "openfeature": OpenFeatureSettings,
}

_layers: ContextVar[list[Layer] | None] = ContextVar("chiron_settings_layers", default=None)


class _LayerSource(PydanticBaseSettingsSource):
    """One layer read by chiron.core.config, as a pydantic-settings source."""

    def __init__(self, settings_cls: type[BaseSettings], layer: Layer) -> None:
        super().__init__(settings_cls)
        self.layer = layer

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.layer.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.layer.data)


class Settings(BaseSettings):
    """Every chiron setting (docs/config.md). ``Settings()`` reads the files and the environment;
    keyword arguments are the command's options and win over everything."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    host: HostSettings = HostSettings()
    mirror: MirrorSettings = MirrorSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    serve: ServeSettings = ServeSettings()
    mcp: McpSettings = McpSettings()
    openfeature: OpenFeatureSettings = OpenFeatureSettings()
    flags: dict[str, FlagValue] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest precedence first: the options (init keywords), then the layers from the top down.
        layers = _layers.get()
        if layers is None:
            layers = read_layers()
        return (init_settings, *(_LayerSource(settings_cls, layer) for layer in reversed(layers)))


@dataclass(frozen=True)
class Effective:
    """The effective settings and, for each dotted key, where its value came from."""

    settings: Settings
    sources: dict[str, tuple[str, str | None]]  # dotted key -> (kind, origin): ("user", "/home/u/...")

    def flag_values(self) -> dict[str, tuple[Any, str]]:
        """Each flag a layer sets: its value and where it was set (for chiron.core.flags.SettingsProvider)."""
        return {name: (value, self.sources[f"flags.{name}"][1] or "") for name, value in self.settings.flags.items()}

    def value(self, dotted: str) -> Any:
        section, _, name = dotted.partition(".")
        if section == "flags":
            return self.settings.flags.get(name)
        return getattr(getattr(self.settings, section), name)


def check_layer(layer: Layer) -> None:
    """Validate one layer alone, so that an error names its file (or variable, or option) and key."""
    for section, body in layer.data.items():
        where = layer.label if layer.kind in ("system", "user") else None
        if section not in Settings.model_fields:
            origin = layer.origin(section) if where is None else where
            known = ", ".join(f"[{s}]" for s in Settings.model_fields)
            if isinstance(body, dict):
                raise UsageError(f"{origin}: [{section}]: unknown section (known: {known})")
            raise UsageError(f"{origin}: {section}: unknown key (settings live in sections: {known})")
        if not isinstance(body, dict):
            raise UsageError(f"{where or layer.origin(section)}: {section}: must be a table ([{section}])")
        try:
            if section == "flags":
                _Flags.model_validate({"flags": body})
            else:
                SECTION_MODELS[section].model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = err["loc"][1:] if section == "flags" else err["loc"]
            name = ".".join(str(p) for p in loc)
            dotted = f"{section}.{loc[0]}" if loc else section
            origin = where or layer.origin(dotted)
            if err["type"] == "extra_forbidden":
                known = ", ".join(SECTION_MODELS[section].model_fields)
                raise UsageError(f"{origin}: [{section}] {name}: unknown key (known: {known})") from None
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise UsageError(f"{origin}: [{section}] {name}: {msg} (got {err.get('input')!r})") from None


def load(options: dict[str, Any] | None = None, layers: list[Layer] | None = None) -> Effective:
    """Check every layer, merge them (options win) and say where each value came from."""
    from chiron.core.config import option_layer

    all_layers = read_layers() if layers is None else list(layers)
    given = option_layer(options or {})
    if given is not None:
        all_layers.append(given)
    for layer in all_layers:
        check_layer(layer)
    token = _layers.set([layer for layer in all_layers if layer.kind != "option"])
    try:
        settings = Settings(**(given.data if given else {}))
    except ValidationError as exc:  # a combination no single layer has (each was checked above)
        err = exc.errors()[0]
        raise UsageError(f"settings: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    finally:
        _layers.reset(token)
    return Effective(settings, provenance(all_layers))


def provenance(layers: list[Layer]) -> dict[str, tuple[str, str | None]]:
    """For each key (and each flag set anywhere), the highest layer that sets it."""
    out: dict[str, tuple[str, str | None]] = {dotted: ("default", None) for dotted in KEYS}
    for layer in layers:  # lowest first: a later layer overrides
        for section, body in layer.data.items():
            if not isinstance(body, dict):
                continue
            for name in body:
                dotted = f"{section}.{name}"
                if dotted in out or section == "flags":
                    out[dotted] = (layer.kind, layer.origin(dotted))
    return out
