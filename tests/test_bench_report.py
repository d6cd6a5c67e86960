"""bench.report: two backends' results side by side, in figure order, ratios first."""

from __future__ import annotations

from bench.report import table


def figure(key: str, value: float, ratio: float | None, passed: bool | None) -> dict:
    return {
        "key": key,
        "title": f"title {key}",
        "value": value,
        "unit": "ms",
        "ratio": ratio,
        "passed": passed,
        "target": "t",
    }


def test_figures_are_in_number_order_with_each_backends_ratio_first_and_a_dash_where_a_run_lacks_one():
    sqlite = {
        "backend": "sqlite+inmemory",
        "figures": [figure("10a_admin", 12.5, None, True), figure("2_batch", 0.81, 0.81, True)],
    }
    postgres = {"backend": "postgresql+redis", "figures": [figure("2_batch", 0.4, 0.4, False)]}
    lines = table([sqlite, postgres]).splitlines()
    assert lines[0] == "| # | figure | sqlite+inmemory | postgresql+redis | target |"
    assert lines[2] == "| 2 | title 2_batch | **0.81x** (0.81 ms), met | **0.40x** (0.40 ms), missed | t |"
    assert lines[3] == "| 10a | title 10a_admin | 12.5 ms, met | - | t |"
