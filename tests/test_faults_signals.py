"""Signals: generate_metrics and the scheduler stop cleanly, leaving no half-written state.

generate_metrics runs as a real process (in-process writes, then --url against
a live server) and gets SIGTERM or SIGINT mid-stream: it must exit 0, print its
summary, and the database must hold exactly the points it reports as sent (each
request all-or-nothing). The scheduler thread is stopped with Scheduler.stop(),
and a server running it is stopped with SIGTERM: every minute it marked as
rolled up has rollups that agree with the raw points.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.faultkit import SQLITE_FILE, manage, sqlite_env, sqlite_integrity, wait_for
from tests.live import ROOT, LiveServer, server_env

SENT = re.compile(r"generate_metrics: sent (\d+) points for 5 services")


def _count(db) -> int:  # type: ignore[no-untyped-def]
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM metrics_point").fetchone()[0]


def _generator(tmp_path, *args: str) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, "manage.py", "generate_metrics", "--rate", "20", "--seed", "1", *args],
        cwd=ROOT,
        env=server_env(tmp_path, **sqlite_env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.live
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_generator_in_process_stops_cleanly_on_signal(tmp_path, sig):
    assert manage(tmp_path, "migrate", "--noinput", "-v0", **sqlite_env()).returncode == 0
    db = tmp_path / SQLITE_FILE
    proc = _generator(tmp_path)
    try:
        wait_for(lambda: _count(db) >= 100, 30, what="the generator to write points")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    sent = int(SENT.search(out).group(1))
    assert sent % 25 == 0, "whole samples only: 5 services x 5 metric types"
    assert _count(db) == sent
    assert sqlite_integrity(db) == "ok"


@pytest.mark.live
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_generator_over_http_stops_cleanly_on_signal(tmp_path, sig):
    with LiveServer(tmp_path, **sqlite_env()) as server:
        db = tmp_path / SQLITE_FILE
        proc = _generator(tmp_path, "--url", server.url)
        try:
            wait_for(lambda: _count(db) >= 100, 30, what="the generator to post points")
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "answered" not in err and "cannot reach" not in err, err
        sent = int(SENT.search(out).group(1))
        assert sent % 25 == 0
        assert _count(db) == sent


def _rollups_agree_with_raw(db) -> tuple[int, list]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(db) as conn:
        boundary = conn.execute("SELECT rolled_through FROM metrics_rollupstate WHERE id = 1").fetchone()
        rows = conn.execute(
            """
            SELECT r.service, r.metric_type, r.minute, r.count, COUNT(p.id)
            FROM metrics_rollup r
            LEFT JOIN metrics_point p ON p.service = r.service AND p.metric_type = r.metric_type
                AND p.timestamp >= r.minute AND p.timestamp < datetime(r.minute, '+1 minute')
            GROUP BY r.id
            """
        ).fetchall()
        raw_minutes = conn.execute(
            "SELECT COUNT(DISTINCT service || metric_type || strftime('%Y%m%d%H%M', timestamp)) FROM metrics_point "
            "WHERE timestamp < ?",
            [boundary[0] if boundary else "0"],
        ).fetchone()[0]
    bad = [r for r in rows if r[3] != r[4]]
    assert raw_minutes == len(rows), "every rolled-up minute with raw points has exactly one rollup row"
    return len(rows), bad


@pytest.mark.live
def test_scheduler_in_a_server_stops_on_sigterm_with_consistent_rollups(tmp_path):
    server = LiveServer(tmp_path, **sqlite_env(TELEMETRY_SCHEDULER="1", ROLLUP_INTERVAL_SECONDS="1")).start()
    try:
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
        points = [
            {
                "timestamp": (start + timedelta(seconds=10 * i)).isoformat(),
                "service": "sched",
                "metric_type": "cpu",
                "value": float(i % 100),
            }
            for i in range(170)
        ]
        assert httpx.post(server.url + "/metrics/ingest", json=points, timeout=30).status_code == 200
        db = tmp_path / SQLITE_FILE
        wait_for(lambda: _rollups_agree_with_raw(db)[0] > 0, 30, what="the scheduler to roll up")
        server.stop(signal.SIGTERM)
        assert server.proc.returncode is not None
    finally:
        server.stop()
    checked, bad = _rollups_agree_with_raw(db)
    assert checked >= 28 and bad == []
    assert sqlite_integrity(db) == "ok"


@pytest.mark.django_db(transaction=True)
def test_scheduler_stop_ends_its_thread_between_steps(telemetry):
    from metrics.maintenance.runner import Scheduler

    telemetry(ROLLUP_INTERVAL_SECONDS=1, PRUNE_INTERVAL_SECONDS=3600)
    scheduler = Scheduler()
    scheduler.start()
    wait_for(lambda: scheduler.last_prune is not None, 20, what="the first scheduler pass")
    scheduler.stop(timeout=15)
    assert scheduler.thread is not None and not scheduler.thread.is_alive()
    assert scheduler.errors == 0
