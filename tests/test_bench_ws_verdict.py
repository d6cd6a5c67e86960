"""Figure 4b's verdict (bench/fig_ws.py `latency_verdict`, `cpu_split`): when the p99 counts,
and when the receivers or the machine set the pace instead of the server. Pinned on literal runs;
the figure itself is `python -m bench --only 4`, not part of the suite."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import cpu_seconds
from bench.fig_ws import cpu_split, latency_verdict

TARGET_MS = 100.0


def cpu(
    server: float = 0.6, receivers: tuple[float, ...] = (0.1, 0.2), loadgen: float = 0.1, machine: float = 1.0
) -> dict[str, Any]:
    measured = server + sum(receivers) + loadgen
    return {
        "window_seconds": 10.0,
        "cores": 2,
        "server_cores": server,
        "loadgen_cores": loadgen,
        "receiver_cores": {f"receiver{i}": v for i, v in enumerate(receivers)},
        "receivers_cores": sum(receivers),
        "measured_cores": measured,
        "machine_busy_cores": machine,
        "other_cores": max(0.0, machine - measured),
    }


def run(p99: float | None = 40.0, missing: int = 0, lags: int = 0, failed: int = 0, **cpu_args: Any) -> dict:
    return {
        "latency": {"p99_ms": p99},
        "points_missing_total": missing,
        "lag_dropped_total": lags,
        "sender": {"failed_requests": failed},
        "cpu": cpu(**cpu_args),
    }


def test_p99_under_target_passes_when_nothing_is_saturated():
    assert latency_verdict(run(p99=99.9), TARGET_MS) == (True, "pass: p99 99.9 ms vs target < 100 ms")


def test_p99_at_or_over_target_fails_when_nothing_is_saturated():
    assert latency_verdict(run(p99=100.0), TARGET_MS)[0] is False
    assert latency_verdict(run(p99=250.0), TARGET_MS) == (False, "fail: p99 250.0 ms vs target < 100 ms")


def test_a_saturated_receiver_process_gives_no_verdict_even_with_a_slow_p99():
    passed, result = latency_verdict(run(p99=5000.0, receivers=(0.95, 0.3), server=0.3), TARGET_MS)
    assert passed is None
    assert result == "n/a: receivers saturated (1.25 cores); p99 5000.0 ms vs target < 100 ms"


def test_a_saturated_receiver_process_gives_no_verdict_even_with_a_fast_p99():
    assert latency_verdict(run(p99=10.0, receivers=(0.9,), server=0.2), TARGET_MS)[0] is None


def test_the_bench_filling_every_core_gives_no_verdict():
    passed, result = latency_verdict(run(p99=300.0, server=1.2, receivers=(0.4, 0.3), loadgen=0.1), TARGET_MS)
    assert passed is None
    assert result.startswith("n/a: machine saturated (2.00 of 2 cores by the bench)")


def test_other_load_filling_the_machine_gives_no_verdict():
    passed, result = latency_verdict(run(p99=300.0, machine=1.95), TARGET_MS)
    assert passed is None
    assert result.startswith("n/a: machine saturated (1.95 of 2 cores busy, 0.95 outside the bench)")


def test_missing_dropped_or_failed_points_fail_an_unsaturated_run_even_with_a_fast_p99():
    assert latency_verdict(run(missing=3), TARGET_MS) == (
        False,
        "fail: 3 points missing; p99 40.0 ms vs target < 100 ms",
    )
    assert latency_verdict(run(lags=7), TARGET_MS)[0] is False
    assert latency_verdict(run(failed=1), TARGET_MS)[0] is False
    assert latency_verdict(run(p99=None), TARGET_MS) == (False, "fail: no latency measured")


def test_cpu_split_is_each_process_cpu_over_the_window_as_a_fraction_of_a_core():
    before = {"at": 100.0, "machine": 1000.0, "pids": {"server": 50.0, "loadgen": 2.0, "receiver0_probex5": 1.0}}
    after = {"at": 110.0, "machine": 1016.0, "pids": {"server": 58.0, "loadgen": 3.0, "receiver0_probex5": 3.0}}
    split = cpu_split(before, after, cores=2)
    assert split["window_seconds"] == 10.0
    assert (split["server_cores"], split["loadgen_cores"]) == (0.8, 0.1)
    assert split["receiver_cores"] == {"receiver0_probex5": 0.2}
    assert split["receivers_cores"] == 0.2
    assert split["measured_cores"] == 1.1
    assert split["machine_busy_cores"] == 1.6
    assert split["other_cores"] == 0.5


def test_cpu_split_leaves_out_a_process_that_exited_during_the_window():
    before = {"at": 0.0, "machine": 0.0, "pids": {"server": 1.0, "receiver0_countx50": 1.0}}
    after = {"at": 2.0, "machine": 1.0, "pids": {"server": 2.0, "receiver0_countx50": None}}
    split = cpu_split(before, after, cores=2)
    assert split["receiver_cores"] == {"receiver0_countx50": None}
    assert split["measured_cores"] == 0.5


def test_cpu_seconds_follows_a_process_cpu_time():
    start, process_start = cpu_seconds(os.getpid()), time.process_time()
    while time.process_time() - process_start < 0.2:
        pass
    used = cpu_seconds(os.getpid())
    assert start is not None and used is not None
    assert 0.15 <= used - start <= 0.3
