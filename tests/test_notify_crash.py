"""Durable delivery across a crash: SIGKILL a live server while notifications are pending, start it again.

Every notification is delivered after the restart, and none twice to a
receiver that had already answered 2xx before the crash. The server's own
maintenance runner delivers (TELEMETRY_SCHEDULER=1), contact points come
from NOTIFY_URLS as in the compose deployment.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3

import httpx
import pytest

from tests.faultkit import SQLITE_FILE, sqlite_env, wait_for
from tests.live import LiveServer
from tests.notify_receivers import HttpReceiver

pytestmark = [pytest.mark.live, pytest.mark.slow]

SECRET = "crash-secret"


def notification_states(tmp_path) -> list[str]:
    with sqlite3.connect(tmp_path / SQLITE_FILE) as db:
        return [state for (state,) in db.execute("SELECT state FROM metrics_notification ORDER BY id")]


def test_pending_notifications_survive_sigkill_and_none_is_sent_twice(tmp_path):
    with HttpReceiver() as up, HttpReceiver() as down:
        down.fail_next(10**6)  # answers 500 until the crash is over
        env = sqlite_env(
            TELEMETRY_SCHEDULER="1",
            NOTIFY_URLS=f"alertmanager+{up.url} alertmanager+{down.url}",
            NOTIFY_SECRET=SECRET,
            NOTIFY_GROUP_WAIT_SECONDS="0",
            NOTIFY_RETRY_BASE_SECONDS="0.2",
            NOTIFY_RETRY_MAX_SECONDS="0.5",
        )
        server = LiveServer(tmp_path, **env).start()
        try:
            points = [{"service": s, "metric_type": "latency", "value": 1500.0} for s in ("api", "web")]
            assert httpx.post(server.url + "/metrics/ingest", json=points, timeout=30).status_code == 200
            wait_for(lambda: len(up.delivered) == 2, 60, what="the healthy receiver's two messages")
            wait_for(lambda: len(down.attempts) >= 4, 60, what="retries to the failing receiver")
            server.kill()  # SIGKILL while the failing receiver's messages are pending
        finally:
            server.stop()
        assert notification_states(tmp_path).count("pending") == 2

        down.fail_next(0)
        restarted = LiveServer(tmp_path, **env).start()
        try:
            wait_for(lambda: notification_states(tmp_path) == ["sent"] * 4, 60, what="every notification sent")
        finally:
            restarted.stop()
    assert len(up.delivered) == 2, "nothing resent to the receiver that had answered 2xx"
    assert len(down.delivered) == 2
    for got in up.delivered + down.delivered:
        expected = "sha256=" + hmac.new(SECRET.encode(), got.raw, hashlib.sha256).hexdigest()
        assert got.headers["x-telemetry-signature"] == expected
    assert sorted(g.json["groupLabels"]["service"] for g in down.delivered) == ["api", "web"]
