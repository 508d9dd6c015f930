"""The Compose file an appliance ships (``[host].compose``): read it bounded, check that every service
runs an image the appliance carries, and write the copy the host runs, with each image reference
pinned to exactly the signed image (docs/host.md, "Activation").

The same checks run at build (a Compose file naming an image the appliance does not carry is refused
there) and on the host, so the host never runs a service from an image it did not verify.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chiron.errors import SpecError

MAX_BYTES = 1 << 20  # a Compose file is a few KiB; the bound keeps a hostile one cheap to refuse
MAX_NODES = 100_000  # values after YAML aliases are expanded: a "billion laughs" file stops here
_SCALARS = (str, int, float, bool, type(None))


def parse(data: bytes, where: str) -> dict[str, Any]:
    """The Compose document in ``data``: a mapping with a ``services`` mapping, plain JSON types only."""
    import yaml

    if len(data) > MAX_BYTES:
        raise SpecError(f"{where}: {len(data)} bytes, more than a Compose file may hold ({MAX_BYTES})")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{where}: is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError(f"{where}: is not valid YAML{at}: {getattr(exc, 'problem', None) or 'cannot parse'}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise SpecError(f"{where}: is not a Compose file (no 'services' mapping)")
    _check_plain(doc, where)
    return doc


def _check_plain(doc: Any, where: str) -> None:
    """Only what JSON can say (the host writes the pinned copy as JSON), and a bounded size once
    aliases are expanded. Iterative: a recursive alias cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", doc)]
    seen = 0
    while stack:
        path, value = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise SpecError(f"{where}: more than {MAX_NODES} values once its aliases are expanded")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SpecError(f"{where}: at {path or 'the top level'}: key {key!r} is not a string (quote it)")
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif not isinstance(value, _SCALARS):
            raise SpecError(
                f"{where}: at {path}: a YAML {type(value).__name__} is not a plain value (write it as a quoted string)"
            )


def service_images(doc: dict[str, Any], where: str) -> dict[str, str]:
    """Each service's image reference. A service must name an image: nothing is built on the host."""
    out = {}
    for name, service in doc["services"].items():
        if not isinstance(service, dict):
            raise SpecError(f"{where}: services.{name}: is not a mapping")
        if "build" in service:
            raise SpecError(
                f"{where}: services.{name}: 'build' cannot run on a disconnected host",
                hint="build the image, carry it with [[images]] and name it with 'image'",
            )
        image = service.get("image")
        if not isinstance(image, str) or not image:
            raise SpecError(f"{where}: services.{name}: has no 'image'")
        out[name] = image
    return out


def check_carried(doc: dict[str, Any], carried: list[str], where: str) -> dict[str, str]:
    """Refuse a Compose file whose services run an image the appliance does not carry (by the exact
    ``ref`` of its ``[[images]]`` entry); returns each service's image."""
    images = service_images(doc, where)
    missing = sorted({ref for ref in images.values() if ref not in carried})
    if missing:
        listed = ", ".join(carried) or "none"
        raise SpecError(
            f"{where}: the service image(s) {', '.join(missing)} are not carried by the appliance "
            f"(its [[images]]: {listed})",
            hint="add them to [[images]], or name a carried image by its exact ref",
        )
    return images


def pinned(doc: dict[str, Any], pins: dict[str, str]) -> bytes:
    """The Compose file the host runs: each service's image replaced by ``pins[ref]`` (the loaded
    image's ID, or the pushed manifest's digest), written as JSON (which every Compose CLI reads)."""
    out = json.loads(json.dumps(doc))  # a deep copy, with aliases expanded
    for service in out["services"].values():
        service["image"] = pins[service["image"]]
    return (json.dumps(out, indent=2, sort_keys=True) + "\n").encode()


def project_name(appliance: str) -> str:
    """The Compose project of an appliance: one per appliance, the same for every release of it, so
    ``up`` of a new release replaces the containers of the old one."""
    return "chiron-" + re.sub(r"[^a-z0-9_-]", "-", appliance.lower())
