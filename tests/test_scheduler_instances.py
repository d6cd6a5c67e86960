"""Two server instances' maintenance runners rolling up the same minutes at once.

Every instance runs metrics/maintenance/runner.py (TELEMETRY_SCHEDULER on is
the default), so in a scaled-out deployment two runners race over the same
complete minutes. Here two real processes share one database, a real SQLite
file or PostgreSQL, wait at a common start line, and each run maintenance
passes (the first pass prunes, which rolls up; later ones roll up) over three
hours of points: every minute's rollup must equal the raw points, once, and
neither runner may fail ("database is locked", a duplicate key).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.faultkit import sqlite_env, wait_for
from tests.live import ROOT, migrate, server_env
from tests.pgtools import PG_URL, dedicated_database, reachable
from tests.services import require_service

pytestmark = pytest.mark.slow

SERVICES = ("api", "auth", "billing")
TYPES = ("latency", "cpu")
HOURS = 3
EVERY_SECONDS = 20
ROUNDS = 2

# One runner process: set up Django, say it is ready, start at the common go
# signal, then do what the scheduler thread does on its first passes.
RUNNER = """
import pathlib, time
from metrics.alerts import anomaly, outbox  # imported here, not inside the first pass: both start level
from metrics.maintenance import retention
from metrics.maintenance.runner import Scheduler
from metrics.series import rollups
pathlib.Path({ready!r}).touch()
go, deadline = pathlib.Path({go!r}), time.monotonic() + 120
while not go.exists():
    if time.monotonic() > deadline:
        raise SystemExit("no go signal within 120 s")
    time.sleep(0.005)
runner = Scheduler()
for now in (0.0, 15.0, 30.0):  # prune (which rolls up), then two roll-up passes
    runner.tick(now)
print("done")
"""

REPORT = """
import json
from metrics.models import Point, Rollup, RollupState
rows = [
    [r.service, r.metric_type, r.minute.isoformat(), r.count, r.sum, r.min, r.max]
    for r in Rollup.objects.order_by("service", "metric_type", "minute")
]
state = RollupState.objects.filter(id=1).values_list("rolled_through", flat=True).first()
print(json.dumps({"rollups": rows, "points": Point.objects.count(), "rolled_through": state and state.isoformat()}))
"""

SEED = """
import json, sys
from datetime import UTC, datetime
from metrics.ingest.store import store
from metrics.points import Row
points = json.loads(sys.stdin.read())
rows = [Row(datetime.fromtimestamp(t, tz=UTC), s, m, v, {}) for s, m, t, v in points]
for i in range(0, len(rows), 1000):
    store(rows[i : i + 1000])
"""

RESET = """
from metrics.models import Rollup, RollupState
Rollup.objects.all().delete()
RollupState.objects.all().delete()
"""


def shell(env: dict[str, str], code: str, stdin: str = "") -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database(request, tmp_path):
    if request.param == "sqlite":
        env = server_env(tmp_path, **sqlite_env())
        migrate(env)
        yield env
        return
    require_service("PostgreSQL", reachable(PG_URL, 5432), f"nothing answers at {PG_URL}")
    with dedicated_database("telemetry_sched") as url:
        yield server_env(tmp_path, **sqlite_env(DATABASE_URL=url))


def seeded_points(now: datetime) -> list[tuple[str, str, float, float]]:
    """Three hours of points for six series, ending five minutes before `now`'s minute."""
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(hours=HOURS)
    points = []
    for i, t in enumerate(range(int(start.timestamp()), int(end.timestamp()), EVERY_SECONDS)):
        for j, (service, metric_type) in enumerate((s, m) for s in SERVICES for m in TYPES):
            points.append((service, metric_type, float(t), float((i * 7 + j * 13) % 97 + 1)))
    return points


def expected_rollups(points) -> dict[tuple[str, str, str], tuple[int, float, float, float]]:
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for service, metric_type, t, value in points:
        minute = datetime.fromtimestamp(t // 60 * 60, tz=UTC).isoformat()
        groups[(service, metric_type, minute)].append(value)
    return {key: (len(vs), sum(vs), min(vs), max(vs)) for key, vs in groups.items()}


def race(env: dict[str, str], tmp_path: Path, round_no: int) -> int:
    """Start two runners, let them go at once, require both to finish cleanly; the rollup rows they wrote."""
    go = tmp_path / f"go-{round_no}"
    ready = [tmp_path / f"ready-{round_no}-{i}" for i in range(2)]
    runners = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", RUNNER.format(ready=str(r), go=str(go))],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    try:
        wait_for(lambda: all(r.exists() for r in ready), timeout=120, what="both runners ready")
        go.touch()
        results = [p.communicate(timeout=300) for p in runners]
    finally:
        for p in runners:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for p, (out, err) in zip(runners, results, strict=True):
        assert p.returncode == 0 and out.strip().endswith("done"), err[-3000:]
        assert "Traceback" not in err and "database is locked" not in err, err[-3000:]
    # Each runner's prune pass logs the rollup rows it wrote: between them, each series minute once.
    return sum(int(n) for _, err in results for n in re.findall(r"'rolled_up': (\d+)", err))


def test_two_runners_rolling_up_the_same_minutes_at_once_write_each_rollup_once_and_exactly(database, tmp_path):
    env = database
    points = seeded_points(datetime.now(UTC))
    shell(env, SEED, stdin=json.dumps(points))
    expected = expected_rollups(points)
    for round_no in range(ROUNDS):
        if round_no:
            shell(env, RESET)  # the same minutes again, from scratch
        written = race(env, tmp_path, round_no)
        assert written == len(expected), "each chunk is written by one runner, never by both"
        report = json.loads(shell(env, REPORT).strip().splitlines()[-1])
        assert report["points"] == len(points)  # within retention: the prune pass deleted nothing
        keys = [(s, m, datetime.fromisoformat(t).astimezone(UTC).isoformat()) for s, m, t, *_ in report["rollups"]]
        assert len(keys) == len(set(keys)), "a series minute was rolled up twice"
        got = {key: tuple(row[3:]) for key, row in zip(keys, report["rollups"], strict=True)}
        assert set(got) == set(expected)
        for key, (count, total, low, high) in expected.items():
            assert got[key][0] == count and got[key][2:] == (low, high), (key, got[key])
            assert got[key][1] == pytest.approx(total), key
        assert report["rolled_through"] is not None
