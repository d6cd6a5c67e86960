"""Crash during ingestion: SIGKILL a live server mid-stream, restart it on the same SQLite file.

Proves the contract "points are committed before the answer": every point a
client saw acknowledged with 200 is stored exactly once after the crash, and
a request is all-or-nothing (no request has only some of its points stored).
The server runs with the default synchronous=NORMAL in WAL mode, which is
durable against a process crash (see docs/reliability.md).
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from tests.faultkit import SQLITE_FILE, sqlite_env, sqlite_integrity, stored_ids, tagged_batch, wait_for
from tests.live import LiveServer

pytestmark = [pytest.mark.live, pytest.mark.slow]

CLIENTS = 3
BATCH = 7


class Streamer(threading.Thread):
    """Posts tagged batches until the server stops answering; remembers what was acknowledged."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.url, self.name = url, name
        self.acked: list[str] = []  # request ids answered 200
        self.unknown: list[str] = []  # request ids whose answer never came
        self.other: list[tuple[str, int]] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for n in range(100_000):
                rid = f"{self.name}-{n}"
                try:
                    response = client.post(self.url + "/metrics/ingest", json=tagged_batch(rid, BATCH))
                except httpx.HTTPError:
                    self.unknown.append(rid)
                    return
                if response.status_code == 200:
                    self.acked.append(rid)
                else:
                    self.other.append((rid, response.status_code))
                    return


def test_every_acknowledged_point_survives_sigkill_exactly_once(tmp_path):
    server = LiveServer(tmp_path, **sqlite_env()).start()
    streamers = [Streamer(server.url, f"c{i}") for i in range(CLIENTS)]
    try:
        for s in streamers:
            s.start()
        wait_for(lambda: sum(len(s.acked) for s in streamers) >= 150, 60, what="150 acknowledged requests")
        server.kill()  # SIGKILL: no shutdown code runs
        for s in streamers:
            s.join(20)
    finally:
        server.stop()
    assert all(not s.is_alive() for s in streamers)
    assert not [o for s in streamers for o in s.other], "no non-200 answers before the crash"

    restarted = LiveServer(tmp_path, **sqlite_env()).start()
    try:
        db = tmp_path / SQLITE_FILE
        assert sqlite_integrity(db) == "ok"
        ids = stored_ids(db)
        acked = [rid for s in streamers for rid in s.acked]
        unknown = [rid for s in streamers for rid in s.unknown]
        assert len(acked) >= 150
        for rid in acked:
            for i in range(BATCH):
                assert ids[f"{rid}-{i}"] == 1, f"acknowledged point {rid}-{i} stored {ids[f'{rid}-{i}']} times"
        # All-or-nothing: every request has either all of its points or none.
        per_request = Counter(pid.rsplit("-", 1)[0] for pid in ids)
        assert set(per_request.values()) <= {BATCH}, (
            f"partial requests: {[r for r, c in per_request.items() if c != BATCH]}"
        )
        # Nothing appears that no client sent; unanswered requests are all-or-nothing too.
        assert set(per_request) <= set(acked) | set(unknown)
        assert max(ids.values()) == 1
        # The restarted server takes writes again on the same file.
        response = httpx.post(restarted.url + "/metrics/ingest", json=tagged_batch("after", BATCH), timeout=10)
        assert response.status_code == 200, response.text
        assert stored_ids(db)["after-0"] == 1
    finally:
        restarted.stop()
