"""The soak's verdict (bench/soak.py `summarise`): what "flat memory", "zero errors" and "within
retention" mean, pinned on literal samples. The soak itself is `make soak`, not part of the suite."""

from __future__ import annotations

import argparse

from bench.soak import summarise

ARGS = argparse.Namespace(minutes=30, rate=2000, prune_seconds=30)
RETENTION_HOURS = 0.05


def sample(minute: int, rss: float, errors: int = 0, oldest: float = 200.0) -> dict:
    counters = {"points_acked": 2000 * 60 * minute, "ingest_http_503": errors}
    return {
        "elapsed_s": minute * 60.0,
        "rss_mb": rss,
        "memory_mb": {"VmRSS": rss, "RssAnon": rss - 40, "RssFile": 40.0},
        "open_fds": 160,
        "db_mb": 110.0,
        "oldest_point_age_s": oldest,
        "counters": counters,
    }


def steady(rss_by_minute: dict[int, float] | None = None, **last: float) -> list[dict]:
    samples = [sample(m, (rss_by_minute or {}).get(m, 250.0)) for m in range(1, 31)]
    if last:
        samples[-1] = sample(30, samples[-1]["rss_mb"], **last)  # type: ignore[arg-type]
    return samples


def test_a_steady_run_at_the_offered_rate_passes():
    verdict = summarise(steady(), ARGS, RETENTION_HOURS)

    assert verdict["memory_growth_after_warmup"] == 0.0
    assert verdict["rate_sustained"] and verdict["db_within_retention"]
    assert verdict["passed"] is True


def test_memory_that_keeps_growing_after_the_warm_up_fails_as_not_flat():
    # +1.5 MB a minute from minute 5 on: about +14 % between the two five-minute windows.
    samples = steady({m: 250.0 + 1.5 * max(0, m - 5) for m in range(1, 31)})

    verdict = summarise(samples, ARGS, RETENTION_HOURS)

    assert verdict["memory_growth_after_warmup"] > 0.10
    assert verdict["memory_flat"] is False and verdict["passed"] is False


def test_one_high_sample_at_the_end_is_not_read_as_a_leak():
    # SQLite's mapped pages come and go: a single +12 % sample moves the 5-sample mean by ~2 %.
    verdict = summarise(steady({30: 280.0}), ARGS, RETENTION_HOURS)

    assert verdict["memory_growth_first_to_last"] > 0.10
    assert verdict["memory_growth_after_warmup"] < 0.03
    assert verdict["memory_flat"] is True


def test_growth_during_the_warm_up_does_not_count():
    verdict = summarise(steady({m: 150.0 + 20 * m for m in range(1, 5)}), ARGS, RETENTION_HOURS)

    assert verdict["memory_flat"] is True


def test_any_error_fails_the_run():
    verdict = summarise(steady(errors=1), ARGS, RETENTION_HOURS)

    assert verdict["errors"] == 1
    assert verdict["passed"] is False


def test_a_raw_point_older_than_retention_plus_a_prune_interval_fails_the_run():
    # 0.05 h = 180 s, + 30 s between prunes + 120 s for the minute floor and the rollup.
    verdict = summarise(steady(oldest=331.0), ARGS, RETENTION_HOURS)

    assert verdict["db_within_retention"] is False
    assert verdict["passed"] is False


def test_a_two_hour_run_is_judged_flat_from_the_tracemalloc_minute_to_the_end():
    args = argparse.Namespace(minutes=120, rate=2000, prune_seconds=30, tracemalloc=True, tracemalloc_at=30)
    # Warm-up growth until minute 30 does not count against the last 90 minutes...
    rising_early = [sample(m, 200.0 + min(m, 30)) for m in range(1, 121)]
    verdict = summarise(rising_early, args, RETENTION_HOURS)
    assert verdict["late_growth_from_minute"] == 30 and verdict["late_growth"] == 0.0
    assert verdict["late_memory_flat"] is True
    # ...while +0.2 MB a minute after it (about +7 % over 90 minutes) is growth, not noise.
    creeping = [sample(m, 250.0 + 0.2 * max(0, m - 30)) for m in range(1, 121)]
    verdict = summarise(creeping, args, RETENTION_HOURS)
    assert verdict["late_growth"] > 0.05 and verdict["late_memory_flat"] is False
