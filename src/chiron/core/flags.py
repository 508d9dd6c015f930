"""Feature flags, evaluated through OpenFeature (docs/config.md#flags).

chiron's flags gate what is experimental. Each is evaluated through the OpenFeature API (client domain
``chiron``) so that a site that runs a flag service can answer instead of chiron's own provider:

- ``[openfeature] provider = "MODULE:FACTORY"`` (or ``CHIRON_OPENFEATURE_PROVIDER``): chiron imports the
  factory, calls it with ``[openfeature.options]`` and binds the provider it returns to the domain;
- an application that embeds chiron may register a provider itself (``openfeature.api.set_provider``)
  before it calls chiron: chiron then leaves it in place;
- otherwise chiron binds :class:`SettingsProvider`, fed from ``[flags]`` in the settings files and
  ``CHIRON_FLAG_<NAME>`` variables.

An evaluation that fails (a provider that raises, a value of the wrong type, a provider that cannot be
made) gives the flag's default and a notice, never an error: the defaults are the safe choice.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

DOMAIN = "chiron"
NOOP = "No-op Provider"


@dataclass(frozen=True)
class Flag:
    name: str
    default: bool
    description: str


FLAGS: dict[str, Flag] = {
    f.name: f
    for f in (
        Flag(
            "mcp_mutations",
            False,
            "chiron mcp offers the tools that change something (mirror_refresh, upgrade, rollback); "
            "each call still needs confirm: true",
        ),
        Flag(
            "mcp_http",
            False,
            "chiron serve answers MCP over streamable HTTP at /mcp, behind its tokens",
        ),
    )
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsProvider(AbstractProvider):
    """Flag values from chiron's settings: ``values`` maps a flag to (value, where it was set)."""

    NAME = "chiron settings"

    def __init__(self, values: Mapping[str, tuple[Any, str]]) -> None:
        super().__init__()
        self.values = dict(values)

    def get_metadata(self) -> Metadata:
        return Metadata(name=self.NAME)

    def _resolve(self, key: str, default: Any, want: type, convert: Callable[[Any], Any]) -> FlagResolutionDetails[Any]:
        if key not in self.values:
            return FlagResolutionDetails(value=default, reason=Reason.DEFAULT, flag_metadata={"source": "default"})
        raw, origin = self.values[key]
        try:
            value = convert(raw)
        except (TypeError, ValueError):
            return FlagResolutionDetails(
                value=default,
                reason=Reason.ERROR,
                error_code=ErrorCode.TYPE_MISMATCH,
                error_message=f"{origin}: {raw!r} is not a {want.__name__}",
                flag_metadata={"source": origin},
            )
        return FlagResolutionDetails(value=value, reason=Reason.STATIC, flag_metadata={"source": origin})

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, bool, to_bool)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, str, _exact(str))

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, int, lambda v: int(_exact(int | str)(v)))

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, float, lambda v: float(_exact(int | float | str)(v)))

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._resolve(flag_key, default_value, dict, _exact(dict | list))


def to_bool(value: Any) -> bool:
    """A flag's value as a bool: TOML booleans, and true/false/1/0/yes/no/on/off from the environment."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(value)


def _exact(kind: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(value)
        return value

    return check


@dataclass(frozen=True)
class Evaluated:
    """One flag's evaluation: its value, its default, who answered and where the value was set."""

    name: str
    default: bool
    value: bool
    provider: str
    source: str
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": FLAGS[self.name].description if self.name in FLAGS else None,
            "default": self.default,
            "value": self.value,
            "provider": self.provider,
            "source": self.source,
            "error": self.error,
        }


def use_provider(
    values: Mapping[str, tuple[Any, str]],
    factory: str | None,
    options: Mapping[str, Any],
    notice: Callable[[str], None],
) -> str:
    """Bind the provider chiron's flags are evaluated with (see the module's docstring); its name."""
    if factory:
        try:
            provider = _make(factory, options)
            api.set_provider_and_wait(provider, domain=DOMAIN)
            return str(provider.get_metadata().name)
        except Exception as exc:  # a site's provider: whatever it raises, flags fall back to the settings
            notice(f"openfeature provider {factory}: {type(exc).__name__}: {exc}; using chiron's settings for flags")
    current = api.get_provider_metadata(DOMAIN).name
    if factory or current in (NOOP, SettingsProvider.NAME):
        api.set_provider_and_wait(SettingsProvider(values), domain=DOMAIN)
        return SettingsProvider.NAME
    return current  # registered by the application that embeds chiron (or a test): it answers


def _make(factory: str, options: Mapping[str, Any]) -> Any:
    module_name, _, attr = factory.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    provider = target(**options)
    if not callable(getattr(provider, "resolve_boolean_details", None)):
        raise TypeError(f"{factory} returned {type(provider).__name__}, not an OpenFeature provider")
    return provider


def evaluate(name: str, notice: Callable[[str], None]) -> Evaluated:
    """Evaluate one of chiron's flags through OpenFeature; an error gives the default and a notice."""
    flag = FLAGS[name]
    client = api.get_client(DOMAIN)
    provider = api.get_provider_metadata(DOMAIN).name
    details = client.get_boolean_details(name, flag.default)
    source = str(details.flag_metadata.get("source", provider))
    error = None
    if details.error_code is not None:
        error = f"{details.error_code}: {details.error_message or 'no message'}"
        notice(f"flag {name}: {error}; using its default ({str(flag.default).lower()})")
    value = details.value if error is None and isinstance(details.value, bool) else flag.default
    if error is None and details.reason == Reason.DEFAULT:
        source = "default"
    return Evaluated(name, flag.default, value, provider, source, error)
