"""A site's own OpenFeature provider, as a site would name it in [openfeature] provider = "flagsite:make"."""

from __future__ import annotations

from typing import Any

from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata


class SiteFlags(AbstractProvider):
    """Answers every flag from a fixed table (a flag service in a real site)."""

    def __init__(self, values: dict[str, Any], broken: bool = False) -> None:
        super().__init__()
        self.values = values
        self.broken = broken

    def get_metadata(self) -> Metadata:
        return Metadata(name="site flags")

    def _answer(self, key: str, default: Any) -> FlagResolutionDetails[Any]:
        if self.broken:
            raise ConnectionError("flag service unreachable")
        if key not in self.values:
            return FlagResolutionDetails(value=default, reason=Reason.DEFAULT)
        return FlagResolutionDetails(value=self.values[key], reason=Reason.TARGETING_MATCH, variant="site")

    def resolve_boolean_details(self, flag_key: str, default_value: bool, evaluation_context: Any = None) -> Any:
        return self._answer(flag_key, default_value)

    def resolve_string_details(self, flag_key: str, default_value: str, evaluation_context: Any = None) -> Any:
        return self._answer(flag_key, default_value)

    def resolve_integer_details(self, flag_key: str, default_value: int, evaluation_context: Any = None) -> Any:
        return self._answer(flag_key, default_value)

    def resolve_float_details(self, flag_key: str, default_value: float, evaluation_context: Any = None) -> Any:
        return self._answer(flag_key, default_value)

    def resolve_object_details(self, flag_key: str, default_value: Any, evaluation_context: Any = None) -> Any:
        return self._answer(flag_key, default_value)


def make(**options: Any) -> SiteFlags:
    """The factory named in the settings; ``[openfeature.options]`` are its keyword arguments."""
    return SiteFlags(dict(options.get("values", {})), broken=bool(options.get("broken", False)))
