"""Notifications reach real local receivers: the signed Alertmanager webhook, email over SMTP, Apprise JSON.

Alert changes go through metrics.alerts.rules.evaluate inside a transaction, as
ingestion does, so the outbox rows are the ones production writes; the
maintenance runner's pass (outbox.deliver_due) sends them over real sockets.
The clock is time-machine's (the `frozen` fixture, at NOW); receivers are waited for, never slept on.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from metrics.alerts import notify, outbox
from metrics.alerts.models import ContactPoint, Notification
from metrics.alerts.rules import evaluate
from metrics.models import Alert
from metrics.points import Row
from tests.notify_receivers import HttpReceiver, SmtpReceiver

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SECRET = "webhook-secret"


def ingest(*rows: Row) -> None:
    with transaction.atomic():
        evaluate(rows)


def row(value: float, at: float = 0, service: str = "checkout", metric_type: str = "latency") -> Row:
    return Row(NOW + timedelta(seconds=at), service, metric_type, float(value), {})


@pytest.fixture(autouse=True)
def _knobs(telemetry):
    notify.reset_environment_sync()
    telemetry(
        ALERT_RESOLVE_POINTS=1,
        ALERT_RESOLVE_SECONDS=0,
        NOTIFY_GROUP_WAIT_SECONDS=30.0,
        NOTIFY_TIMEOUT_SECONDS=2.0,
        NOTIFY_EXTERNAL_URL="https://telemetry.example",
    )


def contact(url: str, **fields: object) -> ContactPoint:
    return ContactPoint.objects.create(name=url[:90], destination=url, **fields)


def test_alertmanager_webhook_gets_open_escalate_and_resolve_with_a_valid_signature(frozen):
    with HttpReceiver() as hook:
        contact("alertmanager+" + hook.url, secret=SECRET)
        steps = [(row(600, at=0), "firing", "warning"), (row(1500, at=40), "firing", "critical")]
        steps.append((row(100, at=80), "resolved", "critical"))
        for n, (point, status, severity) in enumerate(steps, start=1):
            ingest(point)
            assert outbox.deliver_due() == 0, "nothing goes out inside the grouping window"
            frozen.shift(31)
            assert outbox.deliver_due() == 1
            assert len(hook.delivered) == n
            got = hook.delivered[-1]
            expected = "sha256=" + hmac.new(SECRET.encode(), got.raw, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(got.headers["x-telemetry-signature"], expected)
            body = got.json
            assert (body["version"], body["status"], body["receiver"]) == ("4", status, "alertmanager+" + hook.url)
            assert body["groupKey"] == '{}:{service="checkout"}' and body["groupLabels"] == {"service": "checkout"}
            [alert] = body["alerts"]
            assert alert["labels"]["severity"] == severity and alert["labels"]["kind"] == "threshold"
            assert alert["startsAt"] == "2026-03-02T09:00:00Z"
            assert alert["generatorURL"].startswith("https://telemetry.example/services/checkout/?range=")
            assert len(alert["fingerprint"]) == 16
        assert body["alerts"][0]["endsAt"] == "2026-03-02T09:01:20Z"
    statuses = list(Notification.objects.order_by("id").values_list("status", "state"))
    assert statuses == [("open", "sent"), ("escalate", "sent"), ("resolve", "sent")]


def test_email_reaches_a_real_smtp_server_through_apprise_mailto(frozen):
    with SmtpReceiver() as smtp:
        contact(f"mailto://127.0.0.1:{smtp.port}?from=alerts@example.com&to=oncall@example.com&mode=insecure")
        ingest(row(1500))
        frozen.shift(31)
        assert outbox.deliver_due() == 1
        [mail] = smtp.messages
    assert mail["To"] == "oncall@example.com"
    assert "[FIRING] checkout" in mail["Subject"]
    text = mail.get_payload(decode=True) if not mail.is_multipart() else mail.get_payload(0).get_payload(decode=True)
    assert b"checkout latency 1500 ms above critical threshold" in text


def test_apprise_json_webhook_reaches_a_local_receiver(frozen):
    with HttpReceiver() as hook:
        contact(hook.url.replace("http://", "json://"))
        ingest(row(600))
        frozen.shift(31)
        assert outbox.deliver_due() == 1
        [got] = hook.delivered
    assert got.path == "/hook"
    assert got.json["title"].startswith("[FIRING] checkout")
    assert "checkout latency 600 ms above warning threshold" in got.json["message"]


def test_a_receiver_answering_500_gets_retries_with_backoff_then_the_message(frozen, telemetry):
    telemetry(**{**_conf(), "NOTIFY_RETRY_BASE_SECONDS": 5.0, "NOTIFY_RETRY_MAX_SECONDS": 15.0})
    with HttpReceiver() as hook:
        contact("alertmanager+" + hook.url)
        hook.fail_next(4)
        ingest(row(600))
        frozen.shift(30)
        delays = []
        for _ in range(4):
            before = datetime.now(UTC)
            assert outbox.deliver_due() == 0
            note = Notification.objects.get()
            assert note.state == "pending" and note.last_error.startswith("HTTP 500")
            delays.append((note.next_attempt_at - before).total_seconds())
            frozen.shift(delays[-1] - 1)
            assert outbox.deliver_due() == 0, "not retried before its backoff"
            frozen.shift(1)
        assert delays == [5, 10, 15, 15], "exponential, then capped"
        assert outbox.deliver_due() == 1
        assert len(hook.attempts) == 5 and len(hook.delivered) == 1
    note = Notification.objects.get()
    assert (note.state, note.attempts, note.last_error) == ("sent", 5, "")


def test_a_receiver_that_never_answers_does_not_block_the_others(frozen, telemetry):
    telemetry(**{**_conf(), "NOTIFY_TIMEOUT_SECONDS": 3.0})
    with HttpReceiver(hang=True) as dead, HttpReceiver() as alive, HttpReceiver() as other:
        for hook in (dead, alive, other):  # the dead one's row is first in line
            contact("alertmanager+" + hook.url)
        ingest(row(600))
        frozen.shift(31)
        started = time.perf_counter()  # time-machine freezes monotonic(), not perf_counter()
        assert outbox.deliver_due() == 2
        assert time.perf_counter() - started < 15, "the pass is bounded by the per-request timeout"
        [hung] = dead.attempts
        assert len(alive.delivered) == len(other.delivered) == 1 and len(dead.attempts) == 1
        for got in alive.delivered + other.delivered:
            assert got.at - hung.at < 2.5, "served while the dead destination was still holding its request"
    stuck = Notification.objects.get(contact_point__destination="alertmanager+" + dead.url)
    assert stuck.state == "pending" and "timed out" in stuck.last_error


def test_fifty_series_breaching_at_once_send_one_grouped_message_per_service(frozen):
    services = [f"svc-{n}" for n in range(10)]
    metric_values = {"latency": 900, "error_rate": 0.5, "cpu": 99, "memory": 99, "throughput": 1}
    with HttpReceiver() as hook:
        contact("alertmanager+" + hook.url)
        ingest(*[row(v, service=s, metric_type=m) for s in services for m, v in metric_values.items()])
        assert Alert.objects.firing().count() == 50
        frozen.shift(31)
        assert outbox.deliver_due() == 10
        by_service = {got.json["groupLabels"]["service"]: got.json for got in hook.delivered}
    assert sorted(by_service) == services and len(hook.delivered) == 10
    assert all(len(body["alerts"]) == 5 for body in by_service.values())


def test_changes_within_the_grouping_window_join_one_message(frozen):
    with HttpReceiver() as hook:
        contact("alertmanager+" + hook.url)
        ingest(row(600, metric_type="latency"))
        frozen.shift(20)
        ingest(row(99, metric_type="cpu"))
        frozen.shift(11)
        assert outbox.deliver_due() == 1, "the first change's window is over; the second joined it"
        [got] = hook.delivered
    assert {a["labels"]["metric_type"] for a in got.json["alerts"]} == {"latency", "cpu"}


def test_a_flapping_series_sends_at_most_one_open_per_repeat_interval(frozen, telemetry):
    telemetry(**{**_conf(), "NOTIFY_GROUP_WAIT_SECONDS": 0.0, "NOTIFY_REPEAT_INTERVAL_SECONDS": 600.0})
    with HttpReceiver() as hook:
        contact("alertmanager+" + hook.url)
        for n in range(4):  # open, resolve, open, resolve ... a minute apart
            ingest(row(600, at=120 * n))
            outbox.deliver_due()
            frozen.shift(60)
            ingest(row(100, at=120 * n + 60))
            outbox.deliver_due()
            frozen.shift(60)
        opens = [g for g in hook.delivered if g.json["status"] == "firing"]
        assert len(opens) == 1, "re-opens inside the interval wait"
        frozen.move_to(NOW + timedelta(seconds=659))
        assert outbox.deliver_due() == 0, "the interval runs from the series' last message (the resolve at +60 s)"
        frozen.move_to(NOW + timedelta(seconds=660))
        assert outbox.deliver_due() == 1
        assert len(hook.delivered) == 3, "open, resolve, then one message with the series' latest state"
        assert hook.delivered[-1].json["status"] == "resolved"


def test_two_runners_never_claim_the_same_row(frozen, monkeypatch):
    contact("alertmanager+http://127.0.0.1:9/never")
    ingest(row(600))
    frozen.shift(31)
    now = datetime.now(UTC)
    [pk] = outbox._candidates(now, 10)
    # Both runners read the row as due before either claimed it: the conditional UPDATE decides.
    monkeypatch.setattr(outbox, "_candidates", lambda now, limit: [pk])
    first, second = outbox.claim(now), outbox.claim(now)
    assert first == [pk] and second == []
    frozen.shift(outbox.lease_seconds() + 1)
    assert outbox.claim(datetime.now(UTC)) == [pk], "a lapsed lease (runner died) frees the row"


def test_contact_point_filters_pick_who_hears_about_an_alert(frozen):
    ops = contact("alertmanager+http://127.0.0.1:9/ops", min_severity="critical")
    web = contact("alertmanager+http://127.0.0.1:9/web", services="web")
    every = contact("alertmanager+http://127.0.0.1:9/all", metric_types="latency,cpu")
    ingest(row(600, service="checkout"))
    assert set(Notification.objects.values_list("contact_point", flat=True)) == {every.pk}
    ingest(row(1500, at=10, service="checkout"))
    assert {n.contact_point_id for n in Notification.objects.all()} == {every.pk, ops.pk}
    assert web.notifications.count() == 0


def test_notify_urls_from_the_environment_become_contact_points(telemetry):
    telemetry(**{**_conf(), "NOTIFY_URLS": ["alertmanager+https://am.example/hook", "ntfy://topic"]})
    notify.sync_environment()
    points = list(ContactPoint.objects.values_list("name", "destination", "from_environment"))
    assert points == [("env-1", "alertmanager+https://am.example/hook", True), ("env-2", "ntfy://topic", True)]


def _conf() -> dict:
    from django.conf import settings

    return dict(settings.TELEMETRY)


def test_a_rolled_back_alert_change_leaves_no_notification(frozen):
    contact("alertmanager+http://127.0.0.1:9/x")
    with pytest.raises(RuntimeError), transaction.atomic():
        evaluate([row(1500)])
        assert Notification.objects.count() == 1, "written inside the ingest transaction"
        raise RuntimeError("the ingest fails after evaluating")
    assert Notification.objects.count() == 0 and Alert.objects.count() == 0


def test_send_test_notification_admin_action_reaches_the_destination_and_reports_failures(client):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("admin", password="pw"))
    with HttpReceiver() as hook:
        good = ContactPoint.objects.create(name="a-good", destination="alertmanager+" + hook.url, secret=SECRET)
        bad = ContactPoint.objects.create(name="b-closed", destination="alertmanager+http://127.0.0.1:9/closed")
        data = {"action": "send_test_notification", "_selected_action": [good.pk, bad.pk]}
        response = client.post("/admin/metrics/contactpoint/", data, follow=True)
        [got] = hook.delivered
    shown = [m.message for m in response.context["messages"]]
    assert shown[0] == f"{good.name}: test notification delivered."
    assert shown[1].startswith(f"{bad.name}: test failed: URLError")
    assert got.json["alerts"][0]["labels"]["service"] == "telemetry-test"
    assert Notification.objects.count() == 0, "a test send bypasses the outbox"


def test_the_admin_shows_delivery_state_and_last_error(client, frozen):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("admin", password="pw"))
    contact("alertmanager+http://127.0.0.1:9/x")
    ingest(row(600))
    Notification.objects.update(attempts=2, last_error="HTTP 500: down")
    listing = client.get("/admin/metrics/notification/").content.decode()
    assert "HTTP 500: down" in listing and "pending" in listing
    note = Notification.objects.get()
    assert client.get(f"/admin/metrics/notification/{note.pk}/change/").status_code == 200
    for page in ("contactpoint", "silence"):
        assert client.get(f"/admin/metrics/{page}/").status_code == 200
        assert client.get(f"/admin/metrics/{page}/add/").status_code == 200
