import pytest

pytestmark = pytest.mark.django_db


def test_it_accepts_one_point_and_stores_it(client):
    response = client.post(
        "/metrics/ingest",
        {"timestamp": "2026-11-28T00:00:00Z", "service": "api", "metric_type": "latency", "value": 125.5},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "success", "accepted": 1, "alert": None, "alerts": []}
