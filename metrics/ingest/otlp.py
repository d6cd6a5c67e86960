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

All of this runs before the request reaches the writer thread (prepare), and
costs at most linear time in the body: attribute nesting, rendered tag length,
attributes per point, buckets per histogram and points per request are capped.
Mapping only reads the cumulative state; the updates it computes are applied
by the caller once the points are committed, so a rejected point, a refused
request or a 503 leaves no state behind.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
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
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from metrics.errors import ValidationErrors
from metrics.ingest.validation import MAX_VALUE, validate_points
from metrics.kinds import KINDS, METRIC_TYPES
from metrics.points import Row
from metrics.series import sketch
from metrics.series.rollups import MINUTE, MinuteSummaries

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK

# Arrays and maps inside an attribute value, counted from the attribute itself.
MAX_ATTRIBUTE_DEPTH = 8
# Integers above this lose precision as floats (sums, rollup arithmetic).
MAX_EXACT_COUNT = 2**53
# Observations one histogram data point may add: the rollup's count column is a
# 32-bit PositiveIntegerField, so more would be a database error, not a rollup.
MAX_HISTOGRAM_COUNT = 2**31 - 1

# Defaults for common semantic-convention names, from each kind's otlp_names;
# "unit" is what the metric is assumed to use when it declares none.
METRIC_MAP: dict[str, dict[str, Any]] = {
    name: {"metric_type": kind.name, "unit": unit} for kind in KINDS.values() for name, unit in kind.otlp_names.items()
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
    scales = KINDS[entry["metric_type"]].otlp_units
    if scales is None:  # throughput: a rate in any unit of "things per second"
        return 1.0
    return scales.get(unit or entry.get("unit", ""))


class PointRejected(Exception):
    """A data point that breaks a rule: counted in partial_success, never stored."""


def any_value(value: AnyValue, key: str = "", limit: int | None = None) -> Any:
    """A tag value: scalars as they are, arrays and maps rendered once as JSON text.

    Rendering is linear in the value: nesting deeper than MAX_ATTRIBUTE_DEPTH,
    or a value that cannot fit in `limit` characters, is refused before it is
    built rather than after.
    """
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(value, kind)
    if kind in ("array_value", "kvlist_value"):
        limit = limit if limit is not None else settings.TELEMETRY["MAX_TAG_VALUE_LENGTH"]
        budget = [limit]
        text = orjson.dumps(_plain(value, key, 1, budget, limit)).decode()
        if len(text) > limit:
            raise PointRejected(f"tags.{key[:64]}: longer than {limit} characters")
        return text
    if kind == "bytes_value":
        return raw.hex()
    if kind == "double_value" and raw != raw:  # NaN: let validation say so
        return float("nan")
    return raw


def _plain(value: AnyValue, key: str, depth: int, budget: list[int], limit: int) -> Any:
    """The Python value of a nested AnyValue, charging each node its smallest rendered size to `budget`."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(value, kind)
    if depth > MAX_ATTRIBUTE_DEPTH and kind in ("array_value", "kvlist_value"):
        raise PointRejected(f"tags.{key[:64]}: arrays and maps nest at most {MAX_ATTRIBUTE_DEPTH} deep")
    if kind == "array_value":
        cost = 2 + len(raw.values)  # brackets and commas
    elif kind == "kvlist_value":
        cost = 2 + sum(len(kv.key) + 4 for kv in raw.values)  # braces, quoted keys, colons, commas
    elif kind == "string_value":
        cost = len(raw) + 2
    elif kind == "bytes_value":
        cost = 2 * len(raw) + 2
    else:
        cost = 1
    budget[0] -= cost
    if budget[0] < 0:
        raise PointRejected(f"tags.{key[:64]}: longer than {limit} characters")
    if kind == "array_value":
        return [_plain(v, key, depth + 1, budget, limit) for v in raw.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value, key, depth + 1, budget, limit) for kv in raw.values}
    if kind == "bytes_value":
        return raw.hex()
    if kind == "double_value" and not math.isfinite(raw):
        return None  # JSON has no NaN or infinity
    return raw


def attributes(pairs: Any) -> dict[str, Any]:
    """Data point attributes as tags, within the JSON API's size limits (its other rules follow in validation)."""
    conf = settings.TELEMETRY
    if len(pairs) > conf["MAX_TAGS"]:
        raise PointRejected(f"tags: at most {conf['MAX_TAGS']} tags, got {len(pairs)}")
    tags = {}
    for kv in pairs:
        if len(kv.key) > conf["MAX_TAG_KEY_LENGTH"]:
            raise PointRejected(f"tags.{kv.key[:64]}: keys are at most {conf['MAX_TAG_KEY_LENGTH']} characters")
        value = any_value(kv.value, kv.key, conf["MAX_TAG_VALUE_LENGTH"])
        if isinstance(value, str) and len(value) > conf["MAX_TAG_VALUE_LENGTH"]:
            raise PointRejected(f"tags.{kv.key}: longer than {conf['MAX_TAG_VALUE_LENGTH']} characters")
        tags[kv.key] = value
    return tags


def service_name(pairs: Iterable[Any]) -> Any:
    """The resource's service.name, without rendering its other attributes."""
    for kv in pairs:
        if kv.key == "service.name":
            return kv.value.string_value if kv.value.WhichOneof("value") == "string_value" else None
    return None


# --- Cumulative -> delta ---------------------------------------------------------


# Per entry, beyond its strings and arrays: the dict slot, key and value tuples, ints.
ENTRY_OVERHEAD_BYTES = 400
DEFAULT_STATE_BYTES = 64 * 1024 * 1024


class _CumulativeState:
    """The previous cumulative value per series seen by this process, bounded in bytes.

    Values are (start_time, time, ...) tuples. Mapping reads them (get) and the
    receiver writes the new ones only after the points that produced them were
    committed (update). Beyond OTLP_CUMULATIVE_STATE_BYTES the least recently
    used series are forgotten: their next export counts as a first one.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: OrderedDict[tuple, tuple] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple) -> tuple | None:
        with self.lock:
            value = self.last.get(key)
            if value is not None:
                self.last.move_to_end(key)
            return value

    def update(self, items: Iterable[tuple[tuple, tuple]]) -> None:
        limit = settings.TELEMETRY.get("OTLP_CUMULATIVE_STATE_BYTES", DEFAULT_STATE_BYTES)
        with self.lock:
            for key, value in items:
                previous = self.last.pop(key, None)
                if previous is not None:
                    self.bytes -= entry_bytes(key, previous)
                    if previous[1] > value[1]:  # a late request must not move the series back in time
                        value = previous
                self.last[key] = value
                self.bytes += entry_bytes(key, value)
            while self.bytes > limit and self.last:
                key, value = self.last.popitem(last=False)
                self.bytes -= entry_bytes(key, value)

    def clear(self) -> None:
        with self.lock:
            self.last.clear()
            self.bytes = 0


def entry_bytes(key: tuple, value: tuple) -> int:
    """What one state entry holds: a deterministic estimate, so the bound does not depend on the allocator."""
    service, name, tags = key
    size = ENTRY_OVERHEAD_BYTES + len(service) + len(name) + sum(len(k) + len(v) + 64 for k, v in tags)
    return size + sum(part.nbytes for part in value if isinstance(part, np.ndarray))


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


def apportion(counts: np.ndarray, n: int) -> np.ndarray:
    """`n` observations in proportion to `counts`, in whole numbers that add up to `n` (largest remainders first)."""
    share = counts * (n / counts.sum())
    whole = np.floor(share).astype(np.int64)
    whole[np.argsort(whole - share, kind="stable")[: n - int(whole.sum())]] += 1
    return whole


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


class TooManyPoints(Exception):
    pass


@dataclass
class Mapped:
    points: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[int, HistogramPart] = field(default_factory=dict)
    unknown: Counter = field(default_factory=Counter)
    services: set[str] = field(default_factory=set)
    skipped: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    # Cumulative state to record once stored: (point index, or None for a skipped point; key; value).
    state: list[tuple[int | None, tuple, tuple]] = field(default_factory=list)

    def reject(self, count: int, problem: str) -> None:
        self.rejected += count
        if len(self.problems) < 5:
            self.problems.append(problem)

    def state_updates(self, accepted: Iterable[int]) -> list[tuple[tuple, tuple]]:
        """The state of the accepted and the skipped points; a rejected point leaves none."""
        keep = set(accepted)
        return [(key, value) for index, key, value in self.state if index is None or index in keep]


def count_data_points(request: ExportMetricsServiceRequest) -> int:
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def map_request(request: ExportMetricsServiceRequest) -> Mapped:
    known = metric_map()
    out = Mapped()
    for resource_metrics in request.resource_metrics:
        service = service_name(resource_metrics.resource.attributes)
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
                out.services.add(service)
                _map_metric(out, service, metric.name, kind, data, entry["metric_type"], scale)
    return out


def _map_metric(out: Mapped, service: str, name: str, kind: str, data: Any, metric_type: str, scale: float) -> None:
    for dp in data.data_points:
        if dp.flags & NO_RECORDED_VALUE:
            out.skipped += 1
            continue
        try:
            tags = attributes(dp.attributes)
        except PointRejected as exc:
            out.reject(1, f"{name}: {exc}")
            continue
        timestamp = dp.time_unix_nano / 1e9 if dp.time_unix_nano else None
        point = {"timestamp": timestamp, "service": service, "metric_type": metric_type, "tags": tags}
        if kind == "histogram":
            try:
                _map_histogram(out, point, name, dp, data.aggregation_temporality, scale)
            except PointRejected as exc:
                out.reject(1, f"{name}: {exc}")
            continue
        which = dp.WhichOneof("value")
        if which is None:
            out.reject(1, f"{name}: data point without a value")
            continue
        value = float(getattr(dp, which))
        state = None
        if kind == "sum" and data.is_monotonic:
            rate, state = _rate(service, name, tags, dp, value, data.aggregation_temporality)
            if rate is None:
                out.skipped += 1
                if state is not None:
                    out.state.append((None, *state))
                continue
            value = rate
        if state is not None:
            out.state.append((len(out.points), *state))
        out.points.append({**point, "value": value * scale})


def _rate(service: str, name: str, tags: dict, dp: Any, value: float, temporality: int):  # type: ignore[no-untyped-def]
    """Per-second rate of a monotonic sum data point, and the cumulative state it leaves (key, value)."""
    now, start = dp.time_unix_nano, dp.start_time_unix_nano
    if temporality == DELTA:
        return (value / ((now - start) / 1e9) if start and now > start else None), None
    key = _series_key(service, name, tags)
    state = (key, (start, now, value))
    previous = cumulative.get(key)
    if previous is not None and previous[0] == start and now > previous[1] and value >= previous[2]:
        return (value - previous[2]) / ((now - previous[1]) / 1e9), state
    # First export of this series (or a restart): the average since it started.
    return (value / ((now - start) / 1e9) if start and now > start else None), state


def histogram_problem(dp: Any, scale: float, metric_type: str) -> str | None:
    """Why a histogram data point cannot be stored, checked before anything is computed from it."""
    max_buckets = settings.TELEMETRY.get("OTLP_MAX_HISTOGRAM_BUCKETS", 256)
    n = len(dp.bucket_counts)
    if n > max_buckets:
        return f"{n} buckets; a histogram has at most {max_buckets} (OTLP_MAX_HISTOGRAM_BUCKETS)"
    if n and n != len(dp.explicit_bounds) + 1:
        return "bucket_counts must have one more entry than explicit_bounds"
    if dp.count >= MAX_EXACT_COUNT or any(c >= MAX_EXACT_COUNT for c in dp.bucket_counts):
        return "count and bucket_counts must be below 2^53"
    if n and sum(dp.bucket_counts) != dp.count:
        return "bucket_counts must add up to count"
    bounds = [b * scale for b in dp.explicit_bounds]
    if not all(math.isfinite(b) for b in bounds):
        return "explicit_bounds must be finite numbers"
    if any(b > a for a, b in zip(bounds[1:], bounds, strict=False)):
        return "explicit_bounds must be in increasing order"
    if dp.HasField("sum") and not math.isfinite(dp.sum * scale):
        return "sum must be a finite number"
    kind = KINDS[metric_type]
    low, high = kind.minimum, kind.maximum
    observed = {}
    for name in ("min", "max"):
        if not dp.HasField(name):
            continue
        value = observed[name] = getattr(dp, name) * scale
        if not math.isfinite(value) or abs(value) > MAX_VALUE:
            return f"{name} must be a finite number with magnitude <= {MAX_VALUE:g}"
        if value < low or (high is not None and value > high):
            return f"{name} is outside the range of {metric_type}"
    if len(observed) == 2 and observed["min"] > observed["max"]:
        return "min must not exceed max"
    if dp.HasField("sum") and dp.count:
        mean, slack = dp.sum * scale / dp.count, 1e-9 * (abs(dp.sum * scale / dp.count) + 1e-9)
        if mean < observed.get("min", -math.inf) - slack or mean > observed.get("max", math.inf) + slack:
            return "sum / count must lie between min and max"
    return None


def _map_histogram(out: Mapped, point: dict[str, Any], name: str, dp: Any, temporality: int, scale: float) -> None:
    metric_type = point["metric_type"]
    problem = histogram_problem(dp, scale, metric_type)
    if problem is not None:
        raise PointRejected(problem)
    count = int(dp.count)
    counts = np.array(dp.bucket_counts, dtype=np.int64)
    bounds = np.array(dp.explicit_bounds, dtype=np.float64) * scale
    total = dp.sum * scale if dp.HasField("sum") else None
    state = None
    if temporality == CUMULATIVE:
        key = _series_key(point["service"], name, point["tags"])
        state = (key, (dp.start_time_unix_nano, dp.time_unix_nano, count, total, counts, bounds))
        previous = cumulative.get(key)
        if previous is not None and previous[0] == dp.start_time_unix_nano and count >= previous[2]:
            same_layout = len(previous[4]) == len(counts) and np.array_equal(previous[5], bounds)
            count -= previous[2]
            if same_layout:
                counts = counts - previous[4]
            elif len(counts) and count:
                # Buckets cannot be differenced across layouts: spread the new observations like the whole histogram.
                counts = apportion(counts, count)
            if total is not None and previous[3] is not None:
                total -= previous[3]
    if count > MAX_HISTOGRAM_COUNT:
        raise PointRejected(f"{count} observations in one data point; at most {MAX_HISTOGRAM_COUNT}")
    if count <= 0:
        out.skipped += 1
        if state is not None:
            out.state.append((None, *state))
        return
    # Without min/max the outer bounds stand in, kept within what the metric type can hold.
    kind = KINDS[metric_type]
    floor, ceiling = kind.minimum, min(kind.maximum or MAX_VALUE, MAX_VALUE)
    low = dp.min * scale if dp.HasField("min") else (bounds[0] if len(bounds) else 0.0)
    high = dp.max * scale if dp.HasField("max") else (bounds[-1] if len(bounds) else low)
    low, high = min(max(low, floor), ceiling), min(max(high, floor), ceiling)
    idx, cnt = histogram_sketch(bounds, counts, low, high) if len(counts) else (np.array([]), np.array([]))
    if total is None:  # no sum: estimate it from the buckets
        total = float((sketch.representative(idx) * cnt).sum()) if len(idx) else 0.0
    mean = total / count
    index = len(out.points)
    if state is not None:
        out.state.append((index, *state))
    out.points.append({**point, "value": mean})
    if len(idx) and cnt.sum() == count:
        # Clamp with the buckets actually hit, within what was observed.
        reps = sketch.representative(idx[cnt > 0])
        part = _histogram_part(
            metric_type,
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


def validate(mapped: Mapped) -> tuple[list[Row], list[int]]:
    """Rows for the points that pass every JSON-API rule, and their indices; the rest are rejected."""
    candidates = list(range(len(mapped.points)))
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


@dataclass
class Prepared:
    """A request decoded, mapped and validated: what the writer thread stores."""

    mapped: Mapped
    rows: list[Row]
    contributions: list[MinuteSummaries]
    state: list[tuple[tuple, tuple]]


def prepare(body: bytes, as_json: bool) -> Prepared:
    """Decode, cap, map and validate one request body (no database access).

    Raises DecodeFailed (answer 400) or TooManyPoints (answer 413).
    """
    message = decode(body, as_json)
    limit = settings.TELEMETRY["INGEST_MAX_POINTS"]
    n_points = count_data_points(message)
    if n_points > limit:
        raise TooManyPoints(f"Too many data points: {n_points} > {limit} (INGEST_MAX_POINTS); send smaller batches")
    return prepare_request(message)


def prepare_request(message: ExportMetricsServiceRequest) -> Prepared:
    mapped = map_request(message)
    rows, indices = validate(mapped)
    return Prepared(mapped, rows, contributions(mapped, rows, indices), mapped.state_updates(indices))


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
