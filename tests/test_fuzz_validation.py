"""Property tests of metrics.ingest.validation: any input is either valid rows or a 4xx naming a field.

Hypothesis generates arbitrary JSON shapes, point-like objects with hostile
fields (huge and tiny numbers, NaN/Infinity, unicode and control characters,
nested values) and raw bodies. The validator must never raise anything but
ValidationErrors, and every row it accepts must satisfy the documented rules.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics.errors import ValidationErrors
from metrics.ingest.validation import MAX_VALUE, TAG_KEY_RE, extract_points, parse_json, validate_points
from metrics.kinds import KINDS
from metrics.points import SERVICE_RE

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
hostile_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e15, 1e15 + 1, 2**53 + 1, 10**30, -1, 0]),
    st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "12", ""]),
    st.integers(),
)
names = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=70),
    st.sampled_from(["api", "a" * 64, "a" * 65, "x\x00y", "é", "😀", "api\n", " api", "a/b"]),
)
timestamps = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-11-28T11:59:00Z",
            "2026-11-28T11:59:00",
            "2026-11-28T13:00:00+01:00",
            "not a date",
            "",
            "2026-13-01T00:00:00Z",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**13),
    st.text(max_size=45),
)
tag_values = st.one_of(
    scalars,
    json_values,
    names,
    st.text(min_size=254, max_size=258),
    st.sampled_from(["eu", "a\u202eb", "line\u2028break", "c1\x85", "del\x7f", "tab\t"]),
)
tag_keys = names | st.sampled_from(["region", "_k", "a/b.c-d", "1a", "k" * 64, "k" * 65])
tags = st.one_of(
    st.none(),
    json_values,
    st.dictionaries(tag_keys, tag_values, max_size=20),
)
points = st.fixed_dictionaries(
    {},
    optional={
        "service": names | json_values,
        "metric_type": st.sampled_from([*KINDS, "LATENCY", "", "bogus"]) | json_values,
        "value": hostile_numbers | json_values,
        "timestamp": timestamps,
        "tags": tags,
        "extra": json_values,
    },
)
edge_tag_values = st.one_of(
    st.sampled_from(
        ["eu", "", "a\u202eb", "line\u2028break", "c1\x85", "del\x7f", "tab\t", "x" * 256, "x" * 257, 2**53, 2**53 + 1]
    ),
    st.text(max_size=10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans() | st.none(),
)
# Points one field away from valid, so the accepting branch (and each rule's
# edge) is reached often rather than by luck.
near_valid_points = st.fixed_dictionaries(
    {
        "service": st.sampled_from(["api", "db-1", "a" * 64]),
        "metric_type": st.sampled_from(list(KINDS)),
        "value": st.floats(min_value=0, max_value=1),
        "tags": st.dictionaries(
            st.sampled_from(["region", "_k", "a/b.c-d", "k" * 64, "k" * 65, "1a"]), edge_tag_values, max_size=2
        ),
    },
    optional={
        # The edges of the window around NOW: 24 h of raw retention, 300 s into the future.
        "timestamp": st.sampled_from(
            [
                "2026-11-28T11:59:00Z",
                "2026-11-27T12:00:00Z",
                "2026-11-27T11:59:59Z",
                "2026-11-28T12:05:00Z",
                "2026-11-28T12:05:01Z",
                1795867200,
            ]
        )
    },
)
payloads = st.one_of(
    json_values,
    points,
    near_valid_points,
    st.lists(points | near_valid_points | json_values, max_size=6),
    st.fixed_dictionaries({"metrics": st.lists(points, max_size=6) | json_values}),
)


def _assert_rejection(exc: ValidationErrors) -> None:
    assert 400 <= exc.status < 500
    assert isinstance(exc.message, str) and exc.message
    assert exc.details, "a rejection names at least one field"
    for item in exc.details:
        assert isinstance(item["field"], str) and item["field"]
        assert isinstance(item["message"], str)


# Written out here rather than imported, so a rule dropped from the validator
# fails this check: C0 and C1 controls, DEL, the line separator U+2028 and the
# right-to-left override U+202E, which split or reorder a rendered tag.
FORBIDDEN_IN_TAG_VALUES = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u202e]")


def _assert_valid_row(row) -> None:  # type: ignore[no-untyped-def]
    """Every documented rule (docs/api.md, "Validation") holds for an accepted row."""
    conf = django_settings.TELEMETRY
    assert isinstance(row.service, str) and SERVICE_RE.fullmatch(row.service)
    low, high = KINDS[row.metric_type].minimum, KINDS[row.metric_type].maximum
    assert math.isfinite(row.value) and abs(row.value) <= MAX_VALUE
    assert row.value >= low and (high is None or row.value <= high)
    assert row.timestamp.tzinfo is not None
    assert NOW - timedelta(hours=conf["RAW_RETENTION_HOURS"]) <= row.timestamp
    assert row.timestamp <= NOW + timedelta(seconds=conf["MAX_FUTURE_SECONDS"])
    assert isinstance(row.tags, dict) and len(row.tags) <= conf["MAX_TAGS"]
    for key, val in row.tags.items():
        assert isinstance(key, str) and TAG_KEY_RE.fullmatch(key) and len(key) <= conf["MAX_TAG_KEY_LENGTH"], key
        assert val is None or isinstance(val, str | bool | int | float)
        if isinstance(val, str):
            assert len(val) <= conf["MAX_TAG_VALUE_LENGTH"]
            assert not FORBIDDEN_IN_TAG_VALUES.search(val), f"tag {key!r} holds a control character: {val!r}"
        elif isinstance(val, float):
            assert math.isfinite(val)
        elif isinstance(val, int) and not isinstance(val, bool):
            assert abs(val) <= 2**53


@pytest.mark.django_db
@FUZZ
@given(payload=payloads)
def test_validator_accepts_only_valid_rows_and_rejects_with_a_named_field(payload):
    try:
        rows = validate_points(extract_points(payload, 100), now=NOW)
    except ValidationErrors as exc:
        _assert_rejection(exc)
        return
    assert rows
    for row in rows:
        _assert_valid_row(row)


def _stdlib_reads(body: bytes) -> bool:
    """Whether the body is JSON the service can store: the standard library reads it (NaN and
    Infinity included, so the point checks can name the field) and it holds no lone surrogate
    and no integer beyond 64 bits once a NaN or Infinity sent it down the lenient path."""
    try:
        orjson.loads(body)
        return True
    except orjson.JSONDecodeError:
        pass
    try:
        orjson.dumps(json.loads(body))
    except (ValueError, TypeError, RecursionError):
        return False
    return True


@pytest.mark.django_db
@FUZZ
@given(points=st.lists(near_valid_points, min_size=1, max_size=3))
def test_validator_holds_every_rule_at_its_edge(points):
    try:
        rows = validate_points(points, now=NOW)
    except ValidationErrors as exc:
        _assert_rejection(exc)
        return
    assert len(rows) == len(points)
    for row in rows:
        _assert_valid_row(row)


@FUZZ
@given(
    body=st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | json_values.map(lambda value: json.dumps(value, allow_nan=True).encode())
)
def test_parse_json_rejects_garbage_with_a_body_error(body):
    try:
        parsed = parse_json(body)
    except ValidationErrors as exc:
        _assert_rejection(exc)
        assert exc.details[0]["field"] == "body"
        assert not _stdlib_reads(body), f"a readable JSON document was refused: {body!r}"
    else:
        assert _stdlib_reads(body), f"garbage was read as JSON: {body!r}"
        # orjson reads integers beyond 64 bits as floats; the standard library, told so, must agree.
        expected = json.loads(
            body, parse_int=lambda digits: int(digits) if -(2**63) <= int(digits) < 2**64 else float(digits)
        )
        assert json.dumps(parsed, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize(
    "token", ["NaN", "-NaN", "Infinity", "-Infinity", "inf", "1e999", "-1e999", '"NaN"', '"Infinity"', '"1e999"']
)
@pytest.mark.django_db
def test_every_spelling_of_nan_and_infinity_is_rejected_naming_value(token):
    body = f'{{"service": "api", "metric_type": "latency", "value": {token}}}'.encode()
    with pytest.raises(ValidationErrors) as caught:
        validate_points(extract_points(parse_json(body), 100), now=NOW)
    _assert_rejection(caught.value)
    assert {d["field"] for d in caught.value.details} <= {"value", "body"}


@pytest.mark.django_db
def test_deep_nesting_is_a_400_not_a_crash():
    for body in (b"[" * 100_000, b'{"a":' * 50_000, b"[" * 1000 + b"]" * 1000):
        try:
            payload = parse_json(body)
            validate_points(extract_points(payload, 100), now=NOW)
        except ValidationErrors as exc:
            _assert_rejection(exc)
        else:
            pytest.fail("nested arrays are not points")
