"""Ingest parses and validates before the write is queued: the writer thread only stores.

Runs the production writer (DB_THREAD_POOL on, its own thread and commits),
and watches what is handed to it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from metrics.ingest import writer as writer_module
from metrics.models import Point
from metrics.points import Row

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def handed_to_writer(frozen, monkeypatch, telemetry):
    telemetry(DB_THREAD_POOL=True)
    seen: list[tuple] = []
    real_submit = writer_module.writer.submit

    def recording_submit(func, *args, weight=1, locks=()):
        seen.append(args)
        return real_submit(func, *args, weight=weight, locks=locks)

    monkeypatch.setattr(writer_module.writer, "submit", recording_submit)
    return seen


def post(client, payload):
    return client.post("/metrics/ingest", data=json.dumps(payload), content_type="application/json")


def test_the_writer_receives_validated_rows_not_the_body(client, handed_to_writer):
    points = [{"service": "api", "metric_type": "cpu", "value": float(i)} for i in range(3)]
    response = post(client, points)
    assert response.status_code == 200, response.content
    assert len(handed_to_writer) == 1
    rows = handed_to_writer[0][1]
    assert [type(r) for r in rows] == [Row] * 3
    assert Point.objects.count() == 3


def test_a_rejected_body_never_reaches_the_writer(client, handed_to_writer):
    response = post(client, {"service": "api", "metric_type": "cpu", "value": "high"})
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "value"
    assert handed_to_writer == []


def test_a_large_batch_is_parsed_off_the_event_loop_and_stored_whole(client, handed_to_writer):
    points = [
        {"service": "api", "metric_type": "cpu", "value": 50.0, "tags": {"host": f"web-{i % 10}"}} for i in range(2000)
    ]
    response = post(client, points)
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 2000
    assert Point.objects.count() == 2000
