import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_a_csrf_rejection_on_the_api_answers_the_json_error_shape():
    client = Client(enforce_csrf_checks=True)
    response = client.generic("PATCH", "/metrics/alerts")
    assert response.status_code == 403
    body = response.json()
    assert body["error"].startswith("CSRF check failed")
    assert body["details"][0]["field"] == "csrf"


def test_a_csrf_rejection_on_a_page_stays_djangos_page():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
