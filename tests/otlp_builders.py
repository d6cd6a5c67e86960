"""Small builders for OTLP ExportMetricsServiceRequest messages used by the OTLP tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


def nanos(when: str | datetime) -> int:
    dt = datetime.fromisoformat(when.replace("Z", "+00:00")) if isinstance(when, str) else when
    return int(dt.timestamp() * 1_000_000) * 1000


def key_values(attrs: dict[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in attrs.items():
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = AnyValue(double_value=value)
        else:
            any_value = AnyValue(string_value=str(value))
        out.append(KeyValue(key=key, value=any_value))
    return out


def request(service: str | None, *metrics: metrics_pb2.Metric) -> ExportMetricsServiceRequest:
    message = ExportMetricsServiceRequest()
    rm = message.resource_metrics.add()
    if service is not None:
        rm.resource.attributes.extend(key_values({"service.name": service, "host.name": "h1"}))
    rm.scope_metrics.add().metrics.extend(metrics)
    return message


def gauge(name: str, unit: str, value: float, at: str, attrs: dict | None = None) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    dp = metric.gauge.data_points.add(time_unix_nano=nanos(at), as_double=value)
    dp.attributes.extend(key_values(attrs or {}))
    return metric


def counter(name: str, unit: str, value: int, start: str, at: str, temporality: int = CUMULATIVE) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.sum.is_monotonic = True
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]  # protobuf enums are ints at run time
    metric.sum.data_points.add(start_time_unix_nano=nanos(start), time_unix_nano=nanos(at), as_int=value)
    return metric


def histogram(
    name: str,
    unit: str,
    bounds: list[float],
    counts: list[int],
    total: float,
    at: str,
    start: str | None = None,
    temporality: int = DELTA,
    attrs: dict | None = None,
    low: float | None = None,
    high: float | None = None,
) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]  # protobuf enums are ints at run time
    dp = metric.histogram.data_points.add(
        time_unix_nano=nanos(at),
        start_time_unix_nano=nanos(start or at),
        count=sum(counts),
        sum=total,
        bucket_counts=counts,
        explicit_bounds=bounds,
    )
    if low is not None:
        dp.min = low
    if high is not None:
        dp.max = high
    dp.attributes.extend(key_values(attrs or {}))
    return metric


def nested(depth: int, leaf: str = "x") -> AnyValue:
    """An attribute value `depth` arrays deep around one string: [[...["x"]...]]."""
    value = AnyValue(string_value=leaf)
    for _ in range(depth):
        outer = AnyValue()
        outer.array_value.values.append(value)
        value = outer
    return value


def with_attribute(metric: metrics_pb2.Metric, key: str, value: AnyValue) -> metrics_pb2.Metric:
    kind = metric.WhichOneof("data")
    assert kind is not None, "the metric has no data"
    for dp in getattr(metric, kind).data_points:
        dp.attributes.append(KeyValue(key=key, value=value))
    return metric
