"""OTLP/HTTP metrics: decode an ExportMetricsServiceRequest and map it onto Telemetry points.

Decoding is the official opentelemetry-proto classes (protobuf, or the OTLP JSON
mapping through google.protobuf.json_format). Mapping:

- the service is the resource attribute `service.name`;
- a metric is recognised by its name (METRIC_MAP, extended by the
  TELEMETRY["OTLP_METRIC_MAP"] setting) and its unit, which sets the scale
  (seconds -> ms for latency, a 0-1 ratio -> % for cpu/memory);
- gauges and non-monotonic sums become points; monotonic sums become
  per-second rates; histograms become a point holding their mean, and their
  bucket counts become a SketchContribution for the minute's percentile sketch;
- data point attributes become tags, checked by validate_points like any point.

Unknown metrics are counted and ignored. Cumulative sums and histograms are
turned into deltas against the previous export this process saw of the same
series (see docs/send-metrics.md for the multi-process caveat).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from . import sketch
from .models import METRIC_TYPES
from .rollups import MINUTE, MinuteSummaries
from .validation import Row, ValidationErrors, validate_points

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK

# Defaults for common semantic-convention names; "unit" is what the metric is
# assumed to use when it declares none.
METRIC_MAP: dict[str, dict[str, Any]] = {
    "http.server.request.duration": {"metric_type": "latency", "unit": "s"},
    "http.server.duration": {"metric_type": "latency", "unit": "ms"},
    "rpc.server.duration": {"metric_type": "latency", "unit": "ms"},
    "latency": {"metric_type": "latency", "unit": "ms"},
    "system.cpu.utilization": {"metric_type": "cpu", "unit": "1"},
    "process.cpu.utilization": {"metric_type": "cpu", "unit": "1"},
    "cpu": {"metric_type": "cpu", "unit": "%"},
    "system.memory.utilization": {"metric_type": "memory", "unit": "1"},
    "process.memory.utilization": {"metric_type": "memory", "unit": "1"},
    "memory": {"metric_type": "memory", "unit": "%"},
    "error_rate": {"metric_type": "error_rate", "unit": "1"},
    "http.server.error_rate": {"metric_type": "error_rate", "unit": "1"},
    "throughput": {"metric_type": "throughput", "unit": "{request}/s"},
    "http.server.requests": {"metric_type": "throughput", "unit": "{request}"},
}

# Unit -> factor into the metric type's own unit (latency ms, cpu/memory %, error_rate 0-1).
UNIT_SCALES: dict[str, dict[str, float]] = {
    "latency": {"s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6},
    "cpu": {"1": 100.0, "%": 1.0},
    "memory": {"1": 100.0, "%": 1.0},
    "error_rate": {"1": 1.0, "%": 0.01},
}


class DecodeFailed(Exception):
    pass


def decode(body: bytes, as_json: bool) -> ExportMetricsServiceRequest:
    message = ExportMetricsServiceRequest()
    try:
        if as_json:
            json_format.Parse(body.decode("utf-8"), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        kind = "OTLP JSON" if as_json else "OTLP protobuf"
        raise DecodeFailed(f"Body is not a valid {kind} ExportMetricsServiceRequest: {str(exc)[:200]}") from None
    return message


def encode_response(rejected: int, message: str, as_json: bool) -> bytes:
    response = ExportMetricsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message
    if as_json:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def metric_map() -> dict[str, dict[str, Any]]:
    merged = {**METRIC_MAP, **settings.TELEMETRY.get("OTLP_METRIC_MAP", {})}
    for name, entry in merged.items():
        if not isinstance(entry, dict) or entry.get("metric_type") not in METRIC_TYPES:
            raise ImproperlyConfigured(
                f"OTLP_METRIC_MAP[{name!r}] must be an object with metric_type one of {', '.join(METRIC_TYPES)}"
            )
        if "scale" in entry and not isinstance(entry["scale"], int | float):
            raise ImproperlyConfigured(f"OTLP_METRIC_MAP[{name!r}].scale must be a number")
    return merged


def scale_for(entry: dict[str, Any], unit: str) -> float | None:
    """Factor from the metric's declared unit to the type's unit; None when the unit does not fit."""
    if "scale" in entry:
        return float(entry["scale"])
    scales = UNIT_SCALES.get(entry["metric_type"])
    if scales is None:  # throughput: a rate in any unit of "things per second"
        return 1.0
    return scales.get(unit or entry.get("unit", ""))


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(value, kind)
    if kind == "array_value":
        return orjson.dumps([any_value(v) for v in raw.values]).decode()
    if kind == "kvlist_value":
        return orjson.dumps({kv.key: any_value(kv.value) for kv in raw.values}).decode()
    if kind == "bytes_value":
        return raw.hex()
    if kind == "double_value" and raw != raw:  # NaN: let validation say so
        return float("nan")
    return raw


def attributes(pairs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


# --- Cumulative -> delta ---------------------------------------------------------


class _CumulativeState:
    """The previous cumulative value per series seen by this process."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: dict[tuple, tuple] = {}

    def swap(self, key: tuple, value: tuple) -> tuple | None:
        with self.lock:
            previous = self.last.get(key)
            if len(self.last) >= self.LIMIT and previous is None:
                self.last.clear()
            self.last[key] = value
            return previous

    def clear(self) -> None:
        with self.lock:
            self.last.clear()


cumulative = _CumulativeState()


def _series_key(service: str, name: str, tags: dict[str, Any]) -> tuple:
    return (service, name, tuple(sorted((k, repr(v)) for k, v in tags.items())))


# --- Histograms ------------------------------------------------------------------


def histogram_sketch(bounds: np.ndarray, counts: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Sketch (bucket index, count) pairs for explicit-bucket counts, spread linearly within each bucket.

    Bucket i covers (bounds[i-1], bounds[i]], narrowed to the observed
    [low, high], which also closes the open-ended first and last buckets.
    """
    edges = np.concatenate(([low], bounds, [high])).astype(np.float64)
    if low <= high:  # no observation lies outside what was observed
        edges = np.clip(edges, low, high)
    indices: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for i, c in enumerate(counts.tolist()):
        if c <= 0:
            continue
        lo, hi = max(edges[i], 0.0), max(edges[i + 1], 0.0)
        lo = min(lo, hi)
        if hi - lo <= hi * 1e-9 or hi < sketch.MIN_INDEXABLE:
            indices.append(sketch.bucket_indices(np.array([hi])))
            weights.append(np.array([float(c)]))
            continue
        lo = max(lo, hi * 1e-4, sketch.MIN_INDEXABLE)
        first, last = sketch.bucket_indices(np.array([lo, hi])).tolist()
        ks = np.arange(first, last + 1)
        upper = np.minimum(np.power(sketch.GAMMA, ks.astype(np.float64)), hi)
        lower = np.maximum(np.power(sketch.GAMMA, ks.astype(np.float64) - 1), lo)
        share = np.clip(upper - lower, 0, None)
        share = share / share.sum() if share.sum() > 0 else np.full(len(ks), 1 / len(ks))
        # Round the running total, so observations sit evenly through the bucket.
        whole = np.diff(np.concatenate(([0.0], np.round(np.cumsum(share) * c))))
        keep = whole > 0
        indices.append(ks[keep])
        weights.append(whole[keep])
    if not indices:
        return np.array([], dtype=np.int32), np.array([], dtype=np.int64)
    return np.concatenate(indices).astype(np.int32), np.concatenate(weights).astype(np.int64)


@dataclass
class HistogramPart:
    """One histogram data point's buckets, minus the one observation its mean point stands for."""

    metric_type: str
    count: int
    total: float
    low: float
    high: float
    indices: np.ndarray
    counts: np.ndarray


def _histogram_part(metric_type: str, mean: float, count: int, total: float, low: float, high: float, idx, cnt):
    if count <= 1 or not len(idx):
        return None
    cnt = cnt.copy()
    # The raw point (the mean) is one observation: take one away from the nearest bucket.
    target = int(sketch.bucket_indices(np.array([mean]))[0])
    nonempty = np.flatnonzero(cnt > 0)
    nearest = nonempty[np.argmin(np.abs(idx[nonempty].astype(np.int64) - target))]
    cnt[nearest] -= 1
    return HistogramPart(metric_type, count - 1, total - mean, low, high, idx, cnt)


# --- Mapping -----------------------------------------------------------------------


@dataclass
class Mapped:
    points: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[int, HistogramPart] = field(default_factory=dict)
    unknown: Counter = field(default_factory=Counter)
    skipped: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    def reject(self, count: int, problem: str) -> None:
        self.rejected += count
        if len(self.problems) < 5:
            self.problems.append(problem)


def map_request(request: ExportMetricsServiceRequest) -> Mapped:
    known = metric_map()
    out = Mapped()
    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        service = resource.get("service.name")
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind) if kind else None
                n_points = len(data.data_points) if data is not None else 0
                entry = known.get(metric.name)
                if entry is None or kind not in ("gauge", "sum", "histogram"):
                    out.unknown[metric.name[:100]] += 1
                    continue
                scale = scale_for(entry, metric.unit)
                if scale is None:
                    out.unknown[f"{metric.name[:100]} [{metric.unit[:20]}]"] += 1
                    continue
                if not isinstance(service, str):
                    out.reject(n_points, "resource attribute service.name (a string) is required")
                    continue
                _map_metric(out, service, metric.name, kind, data, entry["metric_type"], scale)
    return out


def _map_metric(out: Mapped, service: str, name: str, kind: str, data: Any, metric_type: str, scale: float) -> None:
    for dp in data.data_points:
        if dp.flags & NO_RECORDED_VALUE:
            out.skipped += 1
            continue
        tags = attributes(dp.attributes)
        timestamp = dp.time_unix_nano / 1e9 if dp.time_unix_nano else None
        point = {"timestamp": timestamp, "service": service, "metric_type": metric_type, "tags": tags}
        if kind == "histogram":
            _map_histogram(out, point, name, dp, data.aggregation_temporality, scale)
            continue
        which = dp.WhichOneof("value")
        if which is None:
            out.reject(1, f"{name}: data point without a value")
            continue
        value = float(getattr(dp, which))
        if kind == "sum" and data.is_monotonic:
            rate = _rate(service, name, tags, dp, value, data.aggregation_temporality)
            if rate is None:
                out.skipped += 1
                continue
            value = rate
        out.points.append({**point, "value": value * scale})


def _rate(service: str, name: str, tags: dict, dp: Any, value: float, temporality: int) -> float | None:
    """Per-second rate of a monotonic sum data point."""
    now, start = dp.time_unix_nano, dp.start_time_unix_nano
    if temporality == DELTA:
        return value / ((now - start) / 1e9) if start and now > start else None
    previous = cumulative.swap(_series_key(service, name, tags), (start, now, value))
    if previous is not None and previous[0] == start and now > previous[1] and value >= previous[2]:
        return (value - previous[2]) / ((now - previous[1]) / 1e9)
    # First export of this series (or a restart): the average since it started.
    return value / ((now - start) / 1e9) if start and now > start else None


def _map_histogram(out: Mapped, point: dict[str, Any], name: str, dp: Any, temporality: int, scale: float) -> None:
    count = int(dp.count)
    counts = np.array(dp.bucket_counts, dtype=np.int64)
    bounds = np.array(dp.explicit_bounds, dtype=np.float64) * scale
    total = dp.sum * scale if dp.HasField("sum") else None
    if len(counts) and len(counts) != len(bounds) + 1:
        out.reject(1, f"{name}: bucket_counts must have one more entry than explicit_bounds")
        return
    if temporality == CUMULATIVE:
        key = _series_key(point["service"], name, point["tags"])
        previous = cumulative.swap(key, (dp.start_time_unix_nano, count, total, counts, bounds))
        if previous is not None and previous[0] == dp.start_time_unix_nano and count >= previous[1]:
            same_layout = len(previous[3]) == len(counts) and np.array_equal(previous[4], bounds)
            if same_layout:
                counts = counts - previous[3]
            count -= previous[1]
            if total is not None and previous[2] is not None:
                total -= previous[2]
    if count <= 0:
        out.skipped += 1
        return
    low = dp.min * scale if dp.HasField("min") else (bounds[0] if len(bounds) else 0.0)
    high = dp.max * scale if dp.HasField("max") else (bounds[-1] if len(bounds) else low)
    idx, cnt = histogram_sketch(bounds, counts, low, high) if len(counts) else (np.array([]), np.array([]))
    if total is None:  # no sum: estimate it from the buckets
        total = float((sketch.representative(idx) * cnt).sum()) if len(idx) else 0.0
    mean = total / count
    index = len(out.points)
    out.points.append({**point, "value": mean})
    if len(idx) and cnt.sum() == count:
        # Clamp with the buckets actually hit, within what was observed.
        reps = sketch.representative(idx[cnt > 0])
        part = _histogram_part(
            point["metric_type"],
            mean,
            count,
            total,
            float(min(low, reps.min())),
            float(max(high, reps.max())),
            idx,
            cnt,
        )
        if part is not None:
            out.histograms[index] = part


# --- Validation and contributions ------------------------------------------------------


def validate(mapped: Mapped, allowed_services: set[str] | None = None) -> tuple[list[Row], list[int]]:
    """Rows for the points that pass every JSON-API rule, and their indices; the rest are rejected."""
    candidates = list(range(len(mapped.points)))
    if allowed_services:
        denied = [i for i in candidates if mapped.points[i]["service"] not in allowed_services]
        if denied:
            mapped.reject(len(denied), f"this API key may not write service {mapped.points[denied[0]]['service']!r}")
            candidates = [i for i in candidates if i not in set(denied)]
    while candidates:
        try:
            return validate_points([mapped.points[i] for i in candidates]), candidates
        except ValidationErrors as exc:
            bad = {d["index"] for d in exc.details if d.get("index") is not None}
            if not bad:
                mapped.reject(len(candidates), exc.message)
                return [], []
            first = next(d for d in exc.details if d.get("index") is not None)
            mapped.reject(len(bad), f"{first['field']}: {first['message']}")
            candidates = [c for pos, c in enumerate(candidates) if pos not in bad]
    return [], []


def contributions(mapped: Mapped, rows: list[Row], indices: list[int]) -> list[MinuteSummaries]:
    parts = []
    for row, index in zip(rows, indices, strict=True):
        part = mapped.histograms.get(index)
        if part is None:
            continue
        minute = int(row.timestamp.timestamp() // MINUTE * MINUTE)
        parts.append(
            MinuteSummaries(
                np.array([row.service], dtype=object),
                np.array([row.metric_type], dtype=object),
                np.array([minute], dtype=np.int64),
                np.array([float(part.count)]),
                np.array([part.total]),
                np.array([part.low]),
                np.array([part.high]),
                [sketch.encode_counts(part.indices, part.counts)],
            )
        )
    return parts


def summary_message(mapped: Mapped) -> str:
    parts = list(mapped.problems)
    if mapped.unknown:
        names = ", ".join(sorted(mapped.unknown)[:10])
        parts.append(f"ignored {sum(mapped.unknown.values())} unrecognised metric(s): {names}")
    return "; ".join(parts)[:1000]
