"""Database outage (PostgreSQL): ingestion answers 503, never hangs, then recovers by itself.

The test runs its own PostgreSQL cluster (initdb in a temp dir, a free port)
so stopping it disturbs nobody. While it is down, /metrics/ingest answers 503
with Retry-After and the JSON error shape (never 500, never a hang: every
request gets an answer within a generous client timeout) and /metrics/health reports the database unhealthy; once it is
back the same server process answers 200 again and stores points.
"""

from __future__ import annotations

import httpx
import pytest

from tests.faultkit import OwnPostgres, postgres_bindir, tagged_batch, wait_for
from tests.live import LiveServer
from tests.services import require_service

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture
def own_postgres():
    require_service(
        "PostgreSQL", postgres_bindir() is not None, "server binaries (/usr/lib/postgresql/*/bin/initdb) not installed"
    )
    pg = OwnPostgres()
    try:
        # With the binaries present a cluster that will not start is a failure
        # to read, not a reason to skip.
        pg.init()
        yield pg
    finally:
        pg.destroy()


def _ingest(url: str, rid: str) -> httpx.Response:
    # "Never a hang" is this timeout: an answer of any kind must come back. How
    # quickly is the server's DB_ANSWER_TIMEOUT_SECONDS, not a wall-clock race here.
    return httpx.post(url + "/metrics/ingest", json=tagged_batch(rid, 3), timeout=60)


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert isinstance(body["error"], str) and body["details"][0]["field"] == "database"


def test_ingest_answers_503_while_postgres_is_down_and_recovers_without_restart(tmp_path, own_postgres):
    env = {"DATABASE_URL": own_postgres.url, "REDIS_URL": "", "MAX_SERIES_PER_SERVICE": "100000"}
    with LiveServer(tmp_path, **env) as server:
        response = _ingest(server.url, "before")
        assert response.status_code == 200, response.text

        own_postgres.stop("fast")
        for i in range(5):
            _assert_unavailable(_ingest(server.url, f"down{i}"))
        # Health reuses a check for HEALTH_CACHE_SECONDS: wait for the outage to show, bounded.
        health = wait_for(
            lambda: (r := httpx.get(server.url + "/metrics/health", timeout=30)).status_code == 503 and r,
            60,
            what="health to report the outage",
        )
        assert health.json()["status"] == "unhealthy"
        assert health.json()["checks"]["database"] != "ok"

        own_postgres.start()
        wait_for(lambda: _ingest(server.url, "again").status_code == 200, 60, what="ingestion to recover")
        response = _ingest(server.url, "after")
        assert response.status_code == 200, response.text
        wait_for(
            lambda: httpx.get(server.url + "/metrics/health", timeout=30).json()["checks"]["database"] == "ok",
            60,
            what="health to report the database back",
        )
        stored = httpx.post(
            server.url + "/metrics/query", json={"services": ["crashsvc"], "aggregation": "raw"}, timeout=30
        ).json()["data"]
        reqs = {p["tags"]["req"] for p in stored}
        assert {"before", "after"} <= reqs
        assert not any(r.startswith("down") for r in reqs), "nothing answered 503 was stored"


def _postgres_pids(pg: OwnPostgres) -> list[int]:
    import subprocess

    out = subprocess.run(["pgrep", "-f", str(pg.datadir)], capture_output=True, text=True).stdout.split()
    postmaster = [int(p) for p in out]
    children = subprocess.run(
        ["pgrep", "-P", ",".join(map(str, postmaster))], capture_output=True, text=True
    ).stdout.split()
    return postmaster + [int(p) for p in children]


def test_ingest_answers_503_when_postgres_stops_responding(tmp_path, own_postgres):
    """A frozen database (SIGSTOP: like a network partition) must not hang requests either."""
    import os
    import signal

    env = {"DATABASE_URL": own_postgres.url, "REDIS_URL": "", "MAX_SERIES_PER_SERVICE": "100000"}
    with LiveServer(tmp_path, **env) as server:
        assert _ingest(server.url, "before").status_code == 200
        pids = _postgres_pids(own_postgres)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(3):
                _assert_unavailable(_ingest(server.url, f"frozen{i}"))
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: _ingest(server.url, "again").status_code == 200, 60, what="ingestion to recover")
        stored = httpx.post(
            server.url + "/metrics/query", json={"services": ["crashsvc"], "aggregation": "raw"}, timeout=30
        ).json()["data"]
        reqs = {p["tags"]["req"] for p in stored}
        assert "before" in reqs
        assert not any(r.startswith("frozen") for r in reqs), "requests answered 503 were rolled back"
