"""Validation of ingested points: one pass, no model instances, field-level errors.

This is the hot path of ingestion, so it is a tight loop over plain dicts rather
than a Form per point; each rule below is one of the documented contracts and
each failure names the point index, the field and the reason.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings

from metrics.errors import ValidationErrors, error_item
from metrics.kinds import KINDS, METRIC_TYPES
from metrics.points import NAIVE_IS_UTC, SERVICE_RE, Row, is_naive, parse_timestamp, timestamp_problem

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Beyond ASCII, characters that change how text around them displays: C1
# controls, bidirectional overrides and isolates (U+202E makes "gpj.exe" read
# "exe.jpg"), line and paragraph separators, zero-width and other format
# characters. Checked only on values that are not plain ASCII.
SPOOFING_CHARS = re.compile(r"[\x80-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")
TAG_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")

MAX_VALUE = 1e15


def parse_json(body: bytes) -> Any:
    if not body:
        raise ValidationErrors("Request body is empty", [error_item(None, "body", "expected a JSON document")])
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        problem = str(exc)
    # Many clients (Python's json.dumps among them) write NaN and Infinity as bare
    # literals. Parse those leniently so the point-level checks can name the
    # index and field that is not finite, instead of a bare "invalid JSON".
    try:
        payload = json.loads(body)
        orjson.dumps(payload)  # lone surrogates: the stdlib accepts them, storage would not
    except (ValueError, TypeError, RecursionError):
        raise ValidationErrors("Invalid JSON", [error_item(None, "body", problem)]) from None
    return payload


def extract_points(payload: Any, max_points: int) -> list[Any]:
    """The three accepted shapes: one point, an array, or {"metrics": [...]}."""
    if isinstance(payload, list):
        points = payload
    elif isinstance(payload, dict) and "metrics" in payload and "metric_type" not in payload:
        points = payload["metrics"]
        if not isinstance(points, list):
            raise ValidationErrors("'metrics' must be an array", [error_item(None, "metrics", "expected an array")])
    elif isinstance(payload, dict):
        points = [payload]
    else:
        raise ValidationErrors(
            'Expected a point object, an array of points or {"metrics": [...]}',
            [error_item(None, "body", f"got JSON {type(payload).__name__}")],
        )
    if not points:
        raise ValidationErrors("No points in request", [error_item(None, "metrics", "at least one point is required")])
    if len(points) > max_points:
        raise ValidationErrors(
            f"Too many points: {len(points)} > {max_points}",
            [error_item(None, "metrics", f"at most {max_points} points per request")],
            status=413,
        )
    return points


class _Seen:
    """One request's limits and the strings that already passed a rule in it.

    A batch repeats the same few services, tag keys and tag values; every rule
    on them is a pure function of the string, so each distinct string is
    checked once per request (a 1,000-point batch spent most of its validation
    running the same regexes on the same strings).
    """

    __slots__ = ("max_tags", "max_key", "max_value", "services", "keys", "values")

    def __init__(self, conf: dict[str, Any]) -> None:
        self.max_tags: int = conf["MAX_TAGS"]
        self.max_key: int = conf["MAX_TAG_KEY_LENGTH"]
        self.max_value: int = conf["MAX_TAG_VALUE_LENGTH"]
        self.services: set[str] = set()
        self.keys: set[str] = set()
        self.values: set[str] = set()


def _validate_tags(tags: Any, index: int, errors: list[dict[str, Any]], seen: _Seen) -> dict[str, Any]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        errors.append(error_item(index, "tags", "expected an object of scalar values"))
        return {}
    if len(tags) > seen.max_tags:
        errors.append(error_item(index, "tags", f"at most {seen.max_tags} tags, got {len(tags)}"))
        return {}
    keys, values = seen.keys, seen.values
    for key, val in tags.items():
        if key in keys and val.__class__ is str and val in values:
            continue  # this key and this value already passed in this request
        if key not in keys:
            if len(key) > seen.max_key or not TAG_KEY_RE.fullmatch(key):
                errors.append(
                    error_item(
                        index,
                        f"tags.{key[:64]}",
                        f"tag keys are 1-{seen.max_key} characters of [A-Za-z0-9_.-/], starting with a letter or _",
                    )
                )
                continue
            keys.add(key)
        if isinstance(val, str):
            if val.__class__ is str and val in values:
                continue
            if len(val) > seen.max_value:
                errors.append(error_item(index, f"tags.{key}", f"longer than {seen.max_value} characters"))
            elif CONTROL_CHARS.search(val) or (not val.isascii() and SPOOFING_CHARS.search(val)):
                errors.append(
                    error_item(
                        index,
                        f"tags.{key}",
                        "control, bidirectional-override, line-separator and invisible format characters "
                        "are not allowed",
                    )
                )
            elif val.__class__ is str:  # a str subclass may hash and compare unlike its text
                values.add(val)
        elif isinstance(val, float):
            if not math.isfinite(val):
                errors.append(error_item(index, f"tags.{key}", "must be finite"))
        elif val is None or isinstance(val, bool | int):
            if isinstance(val, int) and not isinstance(val, bool) and abs(val) > 2**53:
                errors.append(error_item(index, f"tags.{key}", "integer out of range"))
        else:
            errors.append(error_item(index, f"tags.{key}", "tag values must be strings, numbers, booleans or null"))
    return tags


def validate_points(points: list[Any], now: datetime | None = None) -> list[Row]:
    """Validate every point; raise ValidationErrors listing all failures, or return rows."""
    conf = settings.TELEMETRY
    now = now or datetime.now(UTC)
    newest = now + timedelta(seconds=conf["MAX_FUTURE_SECONDS"])
    oldest = now - timedelta(hours=conf["RAW_RETENTION_HOURS"])
    seen = _Seen(conf)
    services, tag_keys, tag_values, max_tags = seen.services, seen.keys, seen.values, seen.max_tags
    kinds = KINDS.get
    rows: list[Row] = []
    errors: list[dict[str, Any]] = []
    append = rows.append
    for index, point in enumerate(points):
        if not isinstance(point, dict):
            errors.append(error_item(index, "point", "expected an object"))
            continue
        before = len(errors)
        get = point.get
        service = get("service")
        if service.__class__ is str and service in services:
            pass
        elif isinstance(service, str) and SERVICE_RE.fullmatch(service):
            if service.__class__ is str:
                services.add(service)
        else:
            errors.append(error_item(index, "service", "required; 1-64 characters of [A-Za-z0-9_.-]"))
        metric_type = get("metric_type")
        kind = kinds(metric_type) if isinstance(metric_type, str) else None
        if kind is None:
            metric_type = None
            errors.append(error_item(index, "metric_type", f"must be one of {', '.join(METRIC_TYPES)}"))
        value: Any = get("value")
        if value.__class__ is not float and (isinstance(value, bool) or not isinstance(value, int | float)):
            errors.append(error_item(index, "value", "required; must be a number"))
        elif not abs(value) <= MAX_VALUE:  # NaN compares false too
            errors.append(error_item(index, "value", f"must be a finite number with magnitude <= {MAX_VALUE:g}"))
        else:
            value = float(value)
            if kind is not None and not kind.accepts(value):
                errors.append(error_item(index, "value", f"{metric_type} ({kind.unit}) must be {kind.bounds_text()}"))
        raw_ts = get("timestamp")
        if raw_ts is None:
            ts = now
        else:
            try:
                ts = parse_timestamp(raw_ts)
            except (ValueError, OverflowError, OSError) as exc:
                errors.append(error_item(index, "timestamp", timestamp_problem(exc)))
                ts = now
            else:
                if ts > newest:
                    message = f"more than {conf['MAX_FUTURE_SECONDS']} s in the future"
                    if is_naive(raw_ts):
                        # The usual cause: local time sent without its offset from a zone east of UTC.
                        message += f"; {NAIVE_IS_UTC}"
                    errors.append(error_item(index, "timestamp", message))
                elif ts < oldest:
                    errors.append(
                        error_item(
                            index, "timestamp", f"older than the raw retention ({conf['RAW_RETENTION_HOURS']:g} h)"
                        )
                    )
        tags: Any = get("tags")
        if tags.__class__ is dict and len(tags) <= max_tags:
            for key, val in tags.items():
                if key not in tag_keys or val.__class__ is not str or val not in tag_values:
                    tags = _validate_tags(tags, index, errors, seen)
                    break
        else:
            tags = _validate_tags(tags, index, errors, seen)
        if len(errors) == before:
            append(Row(ts, service, metric_type, value, tags))  # type: ignore[arg-type]
        elif len(errors) >= 100:
            break
    if errors:
        noun = "point" if len(points) == 1 else "points"
        raise ValidationErrors(f"Invalid {noun}: nothing was stored", errors)
    return rows
