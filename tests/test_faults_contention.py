"""Contention on SQLite: 8 writers over HTTP, `manage.py prune` in a loop and dashboard reads at once.

Two daphne processes share one SQLite file (so writers really compete for the
write lock across processes, not only inside one server's thread), a third
process prunes continuously, and a reader hits the dashboard and query API.
Writers send points up to 150 s late, so rollups of already rolled-up minutes
are corrected while prune advances the boundary. Expected: no error anywhere,
every acknowledged point stored exactly once, and afterwards every rolled-up
minute's count equals its raw count.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.faultkit import SQLITE_FILE, sqlite_env, sqlite_integrity, stored_ids, tagged_batch
from tests.live import ROOT, LiveServer, server_env

pytestmark = [pytest.mark.live, pytest.mark.slow]

WRITERS = 8
BATCH = 10
RUN_SECONDS = 8.0


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Writer(threading.Thread):
    def __init__(self, urls: list[str], index: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.urls, self.index, self.stop = urls, index, stop
        self.acked: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        rng = random.Random(self.index)
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                rid = f"w{self.index}-{n}"
                ts = datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 150))
                url = self.urls[n % len(self.urls)]
                try:
                    response = client.post(url + "/metrics/ingest", json=tagged_batch(rid, BATCH, timestamp=_iso(ts)))
                except httpx.HTTPError as exc:
                    self.failures.append(f"{rid}: {type(exc).__name__}")
                    return
                if response.status_code == 200:
                    self.acked.append(rid)
                else:
                    self.failures.append(f"{rid}: {response.status_code} {response.text[:200]}")
                n += 1


class Reader(threading.Thread):
    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, stop
        self.requests = 0
        self.failures: list[str] = []

    def run(self) -> None:
        body = {"aggregation": "1m", "services": ["crashsvc"]}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                for method, path, payload in (
                    ("GET", "/", None),
                    ("GET", "/metrics/services", None),
                    ("POST", "/metrics/query", body),
                    ("POST", "/metrics/query", {**body, "aggregation": "raw", "limit": 100}),
                    ("GET", "/metrics/alerts?limit=50", None),
                ):
                    try:
                        response = client.request(method, self.url + path, json=payload)
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {type(exc).__name__}")
                        continue
                    self.requests += 1
                    if response.status_code != 200:
                        self.failures.append(f"{path}: {response.status_code} {response.text[:200]}")


def _prune_loop(tmp_path, stop: threading.Event, results: list) -> None:
    # A 1 h raw retention for the pruner: the seeded 2 h-old points really get deleted.
    env = server_env(tmp_path, **sqlite_env(RAW_RETENTION_HOURS="1"))
    while not stop.is_set():
        proc = subprocess.run(
            [sys.executable, "manage.py", "prune"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        results.append((proc.returncode, proc.stdout.strip(), proc.stderr.strip()[-500:]))


def test_concurrent_writers_prune_and_reads_lose_nothing(tmp_path):
    env = sqlite_env()
    a = LiveServer(tmp_path, **env).start()
    b = LiveServer(tmp_path, migrate_first=False, **env).start()
    try:
        old = datetime.now(UTC) - timedelta(hours=2)
        seeded = httpx.post(a.url + "/metrics/ingest", json=tagged_batch("old", 50, timestamp=_iso(old)), timeout=30)
        assert seeded.status_code == 200, seeded.text

        stop = threading.Event()
        writers = [Writer([a.url, b.url], i, stop) for i in range(WRITERS)]
        readers = [Reader(a.url, stop), Reader(b.url, stop)]
        prune_results: list = []
        pruner = threading.Thread(target=_prune_loop, args=(tmp_path, stop, prune_results), daemon=True)
        for t in [*writers, *readers, pruner]:
            t.start()
        time.sleep(RUN_SECONDS)  # the load runs for a fixed, bounded time
        stop.set()
        for t in [*writers, *readers, pruner]:
            t.join(150)
        assert not any(t.is_alive() for t in [*writers, *readers, pruner])

        assert [f for w in writers for f in w.failures] == []
        assert [f for r in readers for f in r.failures] == []
        assert prune_results, "prune ran at least once"
        assert [r for r in prune_results if r[0] != 0] == []
        assert sum(r.requests for r in readers) > 0

        # A final prune (nothing running) rolls up everything complete.
        final = subprocess.run(
            [sys.executable, "manage.py", "prune"],
            cwd=ROOT,
            env=server_env(tmp_path, **sqlite_env(RAW_RETENTION_HOURS="1")),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert final.returncode == 0, final.stderr
    finally:
        b.stop()
        a.stop()

    db = tmp_path / SQLITE_FILE
    assert sqlite_integrity(db) == "ok"
    ids = stored_ids(db)
    acked = [rid for w in writers for rid in w.acked]
    assert len(acked) > WRITERS
    missing = [f"{rid}-{i}" for rid in acked for i in range(BATCH) if ids[f"{rid}-{i}"] != 1]
    assert missing == [], f"{len(missing)} acknowledged points lost or duplicated"
    assert not any(pid.startswith("old-") for pid in ids), "the seeded points past the 1 h retention were pruned"
    with sqlite3.connect(db) as conn:
        checked = conn.execute(
            """
            SELECT r.minute, r.count, COUNT(p.id)
            FROM metrics_rollup r
            LEFT JOIN metrics_point p ON p.service = r.service AND p.metric_type = r.metric_type
                AND p.timestamp >= r.minute AND p.timestamp < datetime(r.minute, '+1 minute')
            WHERE r.service = 'crashsvc' AND r.minute >= (SELECT MIN(timestamp) FROM metrics_point)
            GROUP BY r.id
            """
        ).fetchall()
    assert checked, "some rolled-up minutes hold the writers' points"
    assert [row for row in checked if row[1] != row[2]] == [], "late points corrected their rollups"
