"""The service's OpenAPI schema as committed in docs/openapi.json (a test compares the two)."""

from __future__ import annotations

import json

from chiron.service.app import build_app


def schema_text() -> str:
    return json.dumps(build_app(None).openapi(), indent=2, sort_keys=True) + "\n"
