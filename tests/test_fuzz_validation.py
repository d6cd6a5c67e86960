"""Property tests of metrics.ingest.validation: any input is either valid rows or a 4xx naming a field.

Hypothesis generates arbitrary JSON shapes, point-like objects with hostile
fields (huge and tiny numbers, NaN/Infinity, unicode and control characters,
nested values) and raw bodies. The validator must never raise anything but
ValidationErrors, and every row it accepts must satisfy the documented rules.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics.errors import ValidationErrors
from metrics.ingest.validation import extract_points, parse_json, validate_points
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
tags = st.one_of(
    st.none(),
    json_values,
    st.dictionaries(names, scalars | json_values, max_size=20),
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
payloads = st.one_of(
    json_values,
    points,
    st.lists(points | json_values, max_size=6),
    st.fixed_dictionaries({"metrics": st.lists(points, max_size=6) | json_values}),
)


def _assert_rejection(exc: ValidationErrors) -> None:
    assert 400 <= exc.status < 500
    assert isinstance(exc.message, str) and exc.message
    assert exc.details, "a rejection names at least one field"
    for item in exc.details:
        assert isinstance(item["field"], str) and item["field"]
        assert isinstance(item["message"], str)


def _assert_valid_row(row) -> None:  # type: ignore[no-untyped-def]
    assert SERVICE_RE.fullmatch(row.service)
    low, high = KINDS[row.metric_type].minimum, KINDS[row.metric_type].maximum
    assert math.isfinite(row.value) and row.value >= low and (high is None or row.value <= high)
    assert row.timestamp.tzinfo is not None
    assert isinstance(row.tags, dict)
    for key, val in row.tags.items():
        assert isinstance(key, str)
        assert val is None or isinstance(val, str | bool | int | float)
        if isinstance(val, float):
            assert math.isfinite(val)


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


@FUZZ
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_parse_json_rejects_garbage_with_a_body_error(body):
    try:
        parse_json(body)
    except ValidationErrors as exc:
        _assert_rejection(exc)
        assert exc.details[0]["field"] == "body"


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
