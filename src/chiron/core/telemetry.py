"""OpenTelemetry traces and metrics, only when configured.

Configured means OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP over HTTP) or a trace file is given
(CHIRON_TRACE_FILE or --trace-file: one JSON object per finished span, then one per metric at exit,
for networks without a collector). Otherwise nothing is imported and ``span``/``count``/``observe``
are no-ops, so --help and verify pay nothing.
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
_meter: Any = None
_meter_provider: Any = None
_metric_file: Path | None = None
_memory_reader: Any = None
_instruments: dict[str, Any] = {}


def configure(trace_file: Path | None = None) -> bool:
    """Set up tracing if configured; returns whether it is on."""
    global _tracer, _provider
    trace_file = trace_file or (Path(os.environ["CHIRON_TRACE_FILE"]) if os.environ.get("CHIRON_TRACE_FILE") else None)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if trace_file is None and not endpoint:
        return False
    if trace_file is not None:
        # Fail now, naming the file, rather than after the command's work when the first span ends.
        with trace_file.open("a", encoding="utf-8"):
            pass
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        from chiron.errors import EnvironmentProblem

        raise EnvironmentProblem(
            "tracing is configured but opentelemetry-sdk is not installed",
            hint="run the chiron of an appliance or PREFIX/bin/chiron, which carry it, "
            "or unset OTEL_EXPORTER_OTLP_ENDPOINT / CHIRON_TRACE_FILE",
        ) from None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from chiron import __version__

    resource = Resource.create({"service.name": "chiron", "service.version": __version__})
    provider = TracerProvider(resource=resource)
    readers: list[Any] = []
    if trace_file is not None:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))  # type: ignore[arg-type]
        readers.append(InMemoryMetricReader())
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            from chiron.errors import EnvironmentProblem

            raise EnvironmentProblem(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed",
                hint="unset it and use --trace-file FILE or CHIRON_TRACE_FILE (JSON lines; carry the file to "
                "your collector), or on a connected host add the 'telemetry' extra to chiron's installation",
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        except ImportError:  # traces still go out; an older exporter package may lack metrics
            pass
    use_providers(provider, MeterProvider(resource=resource, metric_readers=readers))
    global _metric_file, _memory_reader
    _metric_file = trace_file
    _memory_reader = readers[0] if trace_file is not None else None
    return True


def use_providers(tracer_provider: Any, meter_provider: Any = None) -> None:
    """Route chiron's spans (and metrics) to the given SDK providers (also used by tests)."""
    global _tracer, _provider, _meter, _meter_provider
    _provider, _tracer = tracer_provider, tracer_provider.get_tracer("chiron")
    _meter_provider = meter_provider
    _meter = meter_provider.get_meter("chiron") if meter_provider is not None else None
    _instruments.clear()


def count(name: str, value: int, unit: str = "1", **attributes: Any) -> None:
    """Add to a counter (e.g. bytes verified) when metrics are on."""
    if _meter is not None:
        if name not in _instruments:
            _instruments[name] = _meter.create_counter(name, unit=unit)
        _instruments[name].add(value, attributes)


def observe(name: str, value: float, unit: str = "s", **attributes: Any) -> None:
    """Record a value in a histogram (e.g. a duration) when metrics are on."""
    if _meter is not None:
        if name not in _instruments:
            _instruments[name] = _meter.create_histogram(name, unit=unit)
        _instruments[name].record(value, attributes)


def shutdown() -> None:
    """Flush: write collected metrics to the trace file, shut the providers down."""
    global _tracer, _provider, _meter, _meter_provider, _memory_reader, _metric_file
    if _memory_reader is not None and _metric_file is not None:
        _write_metrics(_memory_reader.get_metrics_data(), _metric_file)
    if _meter_provider is not None:
        _meter_provider.shutdown()
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = _meter = _meter_provider = _memory_reader = _metric_file = None
    _instruments.clear()


def _write_metrics(data: Any, path: Path) -> None:
    if data is None:
        return
    with path.open("a", encoding="utf-8") as f:
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = []
                    for dp in metric.data.data_points:
                        point: dict[str, Any] = {"attributes": dict(dp.attributes or {})}
                        if hasattr(dp, "value"):
                            point["value"] = dp.value
                        else:
                            point.update(count=dp.count, sum=dp.sum, min=dp.min, max=dp.max)
                        points.append(point)
                    record = {"metric": metric.name, "unit": metric.unit, "points": points}
                    f.write(json.dumps(record, sort_keys=True) + "\n")


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
