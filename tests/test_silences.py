"""Silences mute notifications (never the alert), from the dashboard panel or the admin, and are pruned with alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from metrics.alerts import notify, outbox
from metrics.alerts.models import ContactPoint, Notification, Silence
from metrics.alerts.rules import evaluate
from metrics.maintenance import retention
from metrics.models import Alert
from metrics.points import Row
from tests.notify_receivers import HttpReceiver

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


def ingest(value: float, at: float = 0, service: str = "checkout", metric_type: str = "latency") -> None:
    with transaction.atomic():
        evaluate([Row(NOW + timedelta(seconds=at), service, metric_type, float(value), {})])


@pytest.fixture(autouse=True)
def _knobs(telemetry):
    notify.reset_environment_sync()
    telemetry(ALERT_RESOLVE_POINTS=1, ALERT_RESOLVE_SECONDS=0, NOTIFY_GROUP_WAIT_SECONDS=0.0)


def silence(minutes: float = 60, **fields: object) -> Silence:
    now = datetime.now(UTC)
    return Silence.objects.create(starts_at=now, ends_at=now + timedelta(minutes=minutes), **fields)


def test_a_silenced_alert_sends_nothing_and_one_notification_when_the_silence_ends_while_it_fires(frozen):
    with HttpReceiver() as hook:
        ContactPoint.objects.create(name="am", destination="alertmanager+" + hook.url)
        silence(60, service="checkout", comment="deploy", created_by="oncall")
        ingest(600)
        ingest(1500, at=10)  # an escalation inside the silence is muted too
        assert Alert.objects.firing().count() == 1, "the alert itself is not muted"
        assert outbox.deliver_due() == 0 and Notification.objects.count() == 0
        frozen.shift(60 * 60)
        assert outbox.deliver_due() == 1
        assert outbox.deliver_due() == 0, "exactly one"
        [got] = hook.delivered
    [alert] = got.json["alerts"]
    assert alert["status"] == "firing" and alert["labels"]["severity"] == "critical"


def test_an_alert_that_resolved_during_its_silence_sends_nothing_when_it_ends(frozen):
    with HttpReceiver() as hook:
        ContactPoint.objects.create(name="am", destination="alertmanager+" + hook.url)
        silence(60, service="checkout")
        ingest(600)
        ingest(100, at=10)
        frozen.shift(60 * 60)
        assert outbox.deliver_due() == 0 and hook.attempts == []


def test_silence_matchers_pick_service_metric_type_and_labels(frozen):
    ContactPoint.objects.create(name="am", destination="alertmanager+http://127.0.0.1:9/x")
    silence(metric_type="cpu")
    silence(service="search", matchers={"severity": "warning"})
    ingest(99, metric_type="cpu")  # silenced by metric type
    ingest(600, service="search")  # silenced: warning
    ingest(1500, service="billing")  # no silence matches
    ingest(1500, service="search", metric_type="error_rate")  # a critical search alert: not matched
    notified = {(a.service, a.metric_type) for n in Notification.objects.all() for a in n.alerts.all()}
    assert notified == {("billing", "latency"), ("search", "error_rate")}


def test_silencing_after_the_change_was_queued_mutes_the_pending_message(frozen, telemetry):
    telemetry(**{**_conf(), "NOTIFY_GROUP_WAIT_SECONDS": 30.0})
    ContactPoint.objects.create(name="am", destination="alertmanager+http://127.0.0.1:9/x")
    ingest(600)
    silence(service="checkout")
    frozen.shift(31)
    assert outbox.deliver_due() == 0
    assert Notification.objects.get().state == "muted"


def test_staff_silence_an_alert_from_the_dashboard_panel_for_one_hour(frozen, staff):
    ingest(600)
    alert = Alert.objects.get()
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    page = client.get("/")
    assert b"Silence 1 h" in page.content
    token = page.cookies["csrftoken"].value
    url = f"/alerts/{alert.pk}/silence"
    assert client.post(url, {"page": "/"}).status_code == 403, "CSRF is checked"
    response = client.post(url, {"page": "/", "csrfmiddlewaretoken": token}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"silenced until 10:00" in response.content and b"Silence 1 h" not in response.content
    made = Silence.objects.get()
    assert (made.service, made.metric_type, made.created_by) == ("checkout", "latency", "oncall")
    assert made.ends_at - made.starts_at == timedelta(hours=1)
    assert Alert.objects.get().state == "firing"


def test_non_staff_cannot_silence(frozen):
    ingest(600)
    alert = Alert.objects.get()
    client = Client()
    assert client.post(f"/alerts/{alert.pk}/silence").status_code == 302, "anonymous: to the login page"
    client.force_login(get_user_model().objects.create_user("viewer", password="pw"))
    assert client.post(f"/alerts/{alert.pk}/silence").status_code == 403
    assert Silence.objects.count() == 0


def test_the_panel_shows_the_delivery_state_of_an_alerts_notification(frozen, staff):
    ContactPoint.objects.create(name="am", destination="alertmanager+http://127.0.0.1:9/x")
    ingest(600)
    Notification.objects.update(last_error="HTTP 500: down")
    client = Client()
    client.force_login(staff)
    body = client.get("/").content.decode()
    assert "notification pending" in body and 'title="HTTP 500: down"' in body


def test_retention_prunes_ended_silences_and_old_notifications_with_their_alerts(frozen, telemetry):
    telemetry(**{**_conf(), "ALERT_RETENTION_DAYS": 7})
    ContactPoint.objects.create(name="am", destination="alertmanager+http://127.0.0.1:9/x")
    silence(60, service="search")
    ingest(1500)
    ingest(100, at=10)
    assert Notification.objects.exists()
    Notification.objects.update(state="sent")
    frozen.shift(60 * 60)
    outbox.deliver_due()  # the silence ends and is handled
    frozen.shift(8 * 86400)
    current = silence(60)
    retention.prune()
    assert list(Silence.objects.all()) == [current]
    assert not Notification.objects.exists() and not Alert.objects.exists()


def _conf() -> dict:
    from django.conf import settings

    return dict(settings.TELEMETRY)


def test_resolving_from_the_dashboard_queues_a_resolve_notification(frozen, staff):
    ContactPoint.objects.create(name="am", destination="alertmanager+http://127.0.0.1:9/x")
    ingest(600)
    Notification.objects.update(state="sent")
    client = Client()
    client.force_login(staff)
    alert = Alert.objects.get()
    assert client.post(f"/alerts/{alert.pk}/resolve", {"page": "/"}).status_code == 302
    queued = Notification.objects.get(state="pending")
    assert queued.status == "resolve" and list(queued.alerts.all()) == [alert]
