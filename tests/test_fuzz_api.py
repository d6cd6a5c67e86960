"""Property tests through the HTTP API: hostile bodies, content types and encodings.

Invariants for every request: never a 5xx; a 200 stores exactly the points it
accepted; every other answer is a 4xx in the one JSON error shape
{"error": str, "details": [{"field": ...}, ...]} and stores nothing.
Most examples go through Django's test client (volume); a bounded handful go
to a live daphne server, where the ASGI layer parses the raw bytes itself.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import orjson
import pytest
import time_machine
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metrics.models import Point
from tests.faultkit import sqlite_env
from tests.live import LiveServer
from tests.test_fuzz_validation import NOW, json_values, payloads

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GOOD = {"service": "api", "metric_type": "latency", "value": 12.5, "tags": {"region": "eu"}}

content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "application/json; charset=latin-1",
        "application/json; charset=bogus",
        "text/json",
        "application/vnd.api+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "application/octet-stream",
    ]
)


def _encodings(payload: object) -> st.SearchStrategy[bytes]:
    text = json.dumps(payload, allow_nan=True)
    return st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"]).map(lambda enc: text.encode(enc, errors="replace"))


raw_tokens = st.sampled_from(
    [
        b'{"service":"api","metric_type":"latency","value":NaN}',
        b'{"service":"api","metric_type":"latency","value":-Infinity}',
        b'{"service":"api","metric_type":"latency","value":1e999}',
        b'{"service":"api","metric_type":"latency","value":"12"}',
        b'{"service":"api","service":"db\\u0000","metric_type":"latency","value":1}',
        b'{"service":"api","metric_type":"latency","value":1,"value":-5}',
        b'{"service":"api","metric_type":"cpu","value":50,"tags":{"a":1,"a":{"x":1}}}',
        b'{"metrics":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
        b"\xef\xbb\xbf" + orjson.dumps(GOOD),
        b"\xff\xfe" + json.dumps(GOOD).encode("utf-16-le"),
        b"",
        b"null",
        b"[]",
        b'{"metrics":{}}',
    ]
)


@st.composite
def bodies(draw) -> bytes:  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["good", "payload", "truncated", "encoded", "raw", "bytes"]))
    if kind == "good":
        return json.dumps(draw(st.just(GOOD) | st.lists(st.just(GOOD), min_size=1, max_size=4))).encode()
    if kind == "payload":
        return json.dumps(draw(payloads), allow_nan=True).encode()
    if kind == "truncated":
        whole = json.dumps(draw(st.lists(st.just(GOOD), min_size=1, max_size=4))).encode()
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if kind == "encoded":
        return draw(_encodings(draw(payloads | st.just(GOOD))))
    if kind == "raw":
        return draw(raw_tokens)
    return draw(st.binary(max_size=300))


def is_known_good(body: bytes, content_type: str) -> bool:
    """The bodies whose answer is certain: GOOD (or a list of it) as plain UTF-8 JSON, declared as JSON."""
    if content_type not in ("application/json", "application/json; charset=utf-8"):
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    # A short list: 10,001 copies of it are a 413.
    return document == GOOD or (
        isinstance(document, list) and 0 < len(document) <= 100 and all(p == GOOD for p in document)
    )


def check_answer(status: int, content: bytes, before: int, after: int, *, good: bool = False) -> None:
    assert status < 500, content[:500]
    body = orjson.loads(content)
    if good:
        assert status == 200, f"the known-good point was refused: {content[:500]!r}"
    if status == 200:
        assert body["status"] == "success"
        assert after - before == body["accepted"] > 0
        return
    assert 400 <= status < 500
    assert isinstance(body["error"], str) and body["error"]
    assert body["details"] and all(isinstance(d["field"], str) and d["field"] for d in body["details"])
    assert after == before, "a rejected request stores nothing"


DATED_GOOD = json.dumps({**GOOD, "timestamp": "2026-11-28T11:59:00Z"}).encode()


@pytest.mark.django_db
def test_ingest_never_5xx_and_rejections_store_nothing(client):
    # The drawn payloads carry literal 2026-11-28 timestamps: without this clock
    # they fall out of the raw retention and only the 400 branch would run.
    statuses: Counter[int] = Counter()
    dated_accepted = 0

    @FUZZ
    @example(body=DATED_GOOD, content_type="application/json")
    @given(body=bodies(), content_type=content_types)
    def run(body: bytes, content_type: str) -> None:
        nonlocal dated_accepted
        before = Point.objects.count()
        # headers=: the test client drops Content-Type when the body is empty, so
        # an empty body would test the missing header, not the drawn one.
        response = client.generic(
            "POST", "/metrics/ingest", body, content_type=content_type, headers={"Content-Type": content_type}
        )
        good = is_known_good(body, content_type)
        check_answer(response.status_code, response.content, before, Point.objects.count(), good=good)
        statuses[response.status_code] += 1
        if response.status_code == 200 and b"2026-11-28" in body:
            dated_accepted += 1

    with time_machine.travel(NOW, tick=False):
        run()
    assert dated_accepted > 0, f"no point with a literal timestamp was ever accepted: {dict(statuses)}"
    assert statuses[200] > 0 and sum(n for status, n in statuses.items() if 400 <= status < 500) > 0


@pytest.mark.django_db
@FUZZ
@given(params=json_values, method=st.sampled_from(["GET", "POST"]))
def test_query_never_5xx(client, params, method):
    if method == "POST":
        response = client.post("/metrics/query", json.dumps(params, allow_nan=True), content_type="application/json")
    else:
        flat = {str(k)[:20]: str(v)[:50] for k, v in params.items()} if isinstance(params, dict) else {"q": str(params)}
        response = client.get("/metrics/query", flat)
    assert response.status_code < 500, response.content[:500]
    if response.status_code != 200:
        body = response.json()
        assert isinstance(body["error"], str) and body["details"][0]["field"]


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_ingest_answers_other_methods_with_405_in_the_error_shape(client, method):
    response = client.generic(method, "/metrics/ingest", b"{}", content_type="application/json")
    assert response.status_code in (405, 200) if method == "OPTIONS" else response.status_code == 405
    if method not in ("HEAD", "OPTIONS"):
        assert response.json()["details"][0]["field"] == "method"


@pytest.mark.live
def test_a_live_server_survives_hostile_bodies_and_stores_nothing_from_them(tmp_path):
    """A bounded sample straight at daphne: its own body parsing and the HTTP stack, not the test client."""
    cases = [
        (b"[" * 100_000, "application/json"),
        (b'{"service":"api","metric_type":"latency","value":NaN}', "application/json"),
        (b'{"service":"api","metric_type":"latency","value":1e999}', "application/json"),
        (json.dumps(GOOD).encode("utf-16"), "application/json; charset=utf-16"),
        (orjson.dumps(GOOD)[:-3], "application/json"),
        (orjson.dumps(GOOD), "text/plain"),
        (orjson.dumps({**GOOD, "service": "bad\u0000name"}), "application/json"),
        (orjson.dumps({**GOOD, "tags": {"k": "\u202e\u0007"}}), "application/json"),
        (b"\x00" * 1000, "application/json"),
        (orjson.dumps([GOOD] * 10_001), "application/json"),
    ]
    with LiveServer(tmp_path, **sqlite_env()) as server, httpx.Client(timeout=30) as client:

        def stored() -> int:
            data = client.post(server.url + "/metrics/query", json={"aggregation": "raw"}).json()["data"]
            return len(data)

        answers = []
        for body, content_type in cases:
            before = stored()
            response = client.post(server.url + "/metrics/ingest", content=body, headers={"Content-Type": content_type})
            check_answer(
                response.status_code, response.content, before, stored(), good=is_known_good(body, content_type)
            )
            answers.append(response.status_code)
        # Only the UTF-16 body with its charset declared may be understood.
        assert [status for i, status in enumerate(answers) if i != 3] == [400, 400, 400, 400, 415, 400, 400, 400, 413]
        before = stored()
        ok = client.post(server.url + "/metrics/ingest", json=GOOD)
        assert ok.status_code == 200 and stored() == before + 1
