"""OpenTelemetry tracing, only when configured.

Configured means OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP over HTTP) or a trace file is given
(CHIRON_TRACE_FILE or --trace-file: one JSON object per finished span, for networks without a
collector). Otherwise nothing is imported and ``span`` is a no-op, so --help and verify pay nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_tracer: Any = None
_provider: Any = None


def configure(trace_file: Path | None = None) -> bool:
    """Set up tracing if configured; returns whether it is on."""
    global _tracer, _provider
    trace_file = trace_file or (Path(os.environ["CHIRON_TRACE_FILE"]) if os.environ.get("CHIRON_TRACE_FILE") else None)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if trace_file is None and not endpoint:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        from chiron.errors import EnvironmentProblem

        raise EnvironmentProblem(
            "tracing is configured but opentelemetry-sdk is not installed",
            hint="pip install 'chiron[telemetry]', or unset OTEL_EXPORTER_OTLP_ENDPOINT / CHIRON_TRACE_FILE",
        ) from None
    from chiron import __version__

    provider = TracerProvider(resource=Resource.create({"service.name": "chiron", "service.version": __version__}))
    if trace_file is not None:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))  # type: ignore[arg-type]
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            from chiron.errors import EnvironmentProblem

            raise EnvironmentProblem(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed",
                hint="pip install 'chiron[telemetry]', or use --trace-file / CHIRON_TRACE_FILE, or unset the variable",
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("chiron")
    return True


def shutdown() -> None:
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span around a block when tracing is on; yields the span (or None) for more attributes."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as s:
        yield s


def set_attr(s: Any, **attributes: Any) -> None:
    if s is not None:
        for k, v in attributes.items():
            s.set_attribute(k, v)


class JsonLinesExporter:
    """A SpanExporter writing one JSON object per span to a file (appending)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        with self.path.open("a", encoding="utf-8") as f:
            for s in spans:
                f.write(
                    json.dumps(
                        {
                            "name": s.name,
                            "trace_id": f"{s.context.trace_id:032x}",
                            "span_id": f"{s.context.span_id:016x}",
                            "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                            "start_ns": s.start_time,
                            "end_ns": s.end_time,
                            "status": s.status.status_code.name,
                            "attributes": dict(s.attributes or {}),
                        },
                        sort_keys=True,
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
