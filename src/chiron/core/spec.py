"""Read an appliance spec (TOML) into ``ApplianceSpec``, with errors that name file and field."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from chiron.core.fs import read_small
from chiron.core.models import ApplianceSpec, KeyRef
from chiron.core.text import printable
from chiron.errors import SpecError, UsageError

MAX_SPEC = 4 << 20  # a spec is a few KiB; this bounds what a wrong path can make chiron read
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise SpecError(f"{where}: environment variable {name} is not set and has no default")
            return default
        return value

    return _VAR.sub(sub, text)


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec plus where it came from, so relative paths resolve against its folder."""

    spec: ApplianceSpec
    path: Path
    raw: bytes

    @property
    def base(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str, field: str) -> Path:
        """A path from the spec, with variables expanded, relative to the spec's folder."""
        expanded = expand_vars(value, f"{self.path}: {field}")
        p = Path(expanded).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def resolve_key_uri(self, key: KeyRef, field: str) -> str:
        """A key URI with variables expanded; a relative file2: path resolves against the spec's folder."""
        uri = expand_vars(key.uri, f"{self.path}: {field}")
        scheme, _, rest = uri.partition(":")
        if scheme == "file2" and not Path(rest).is_absolute():
            uri = f"file2:{(self.base / rest).resolve()}"
        return uri

    @property
    def lock_path(self) -> Path | None:
        lock = self.spec.python.lock
        return None if lock is None else self.resolve_path(lock, "python.lock")


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def load_spec(path: Path) -> LoadedSpec:
    """Parse and validate a spec; raise SpecError naming the file, the field and the problem."""
    if not path.exists() and not path.is_symlink():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = read_small(path, MAX_SPEC, "spec")  # a regular file of bounded size: never /dev/zero or a FIFO
    except UsageError as exc:
        raise SpecError(exc.message) from None
    return load_spec_bytes(raw, str(path), path)


def load_spec_bytes(raw: bytes, where: str, path: Path | None = None) -> LoadedSpec:
    """Validate spec bytes (e.g. the copy signed into an appliance); ``where`` names it in errors."""
    path = path or Path(where)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{where}: spec is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: a hostile spec is malformed, not a crash
        raise SpecError(f"{where}: not valid TOML: nested too deeply") from None
    try:
        spec = ApplianceSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/spec.md)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        # Field names and values come from the file: never a raw control or bidi character on a terminal.
        field, text = printable(_field(tuple(err["loc"])))[1:-1], printable(msg)[1:-1]
        raise SpecError(f"{where}: {field}: {text}{more}") from None
    return LoadedSpec(spec=spec, path=path.resolve(), raw=raw)
