"""The anomaly method on hand-made series (metrics.alerts.anomaly), no database.

Each series is one column of per-minute means starting at minute number M0
(an arbitrary midnight); `alerts` runs the whole pipeline (baseline, score,
transitions) over every minute from `first` and returns the minutes at which
an alert opened and resolved.
"""

from __future__ import annotations

import numpy as np

from metrics.alerts.anomaly import (
    DAY,
    METHOD,
    baseline,
    level_ratio,
    lookup,
    nanmedian,
    run_length,
    score,
    seasonal,
    transitions,
)

M0 = 29_000_000 - 29_000_000 % DAY  # a midnight, as a minute number


def alerts(values: np.ndarray, first: int, k: float = 5.0, n: int = 3) -> tuple[list[int], list[int]]:
    """(opened, resolved): minute offsets from M0 where an alert opened / resolved."""
    column = values.reshape(-1, 1).astype(float)
    minutes = M0 + np.arange(len(column))
    targets = minutes[first:]
    base = baseline(column, minutes, targets)
    z = score(column[first:], base)
    moves = transitions(z, np.array([False]), np.array([k]), np.array([n]))
    return (np.flatnonzero(moves.opened[:, 0]) + first).tolist(), (
        np.flatnonzero(moves.resolved[:, 0]) + first
    ).tolist()


def noisy(level: float, minutes: int, sigma: float, seed: int = 1) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0, sigma, minutes)


def daily(days: int, seed: int = 2) -> np.ndarray:
    t = np.arange(days * DAY)
    cycle = 100 + 60 * np.sin(2 * np.pi * (t / DAY - 10 / 24))
    return cycle * np.random.default_rng(seed).lognormal(0, 0.03, len(t))


def test_nanmedian_ignores_missing_minutes():
    a = np.array([[1.0, np.nan, 3.0, 10.0], [np.nan, np.nan, np.nan, np.nan]])
    assert nanmedian(a, axis=1)[0] == 3.0
    assert np.isnan(nanmedian(a, axis=1)[1])


def test_run_length_counts_consecutive_minutes():
    mask = np.array([[True], [True], [False], [True], [True], [True]])
    assert run_length(mask)[:, 0].tolist() == [1, 2, 0, 1, 2, 3]


def test_a_spike_on_a_flat_series_fires_after_n_minutes_not_before():
    values = noisy(100, 180, sigma=1.0)
    values[120:126] = 400
    opened, resolved = alerts(values, first=60)
    assert opened == [122]  # the third consecutive anomalous minute
    assert resolved == [125 + METHOD.resolve_minutes]  # resolve_minutes calm minutes after the spike ends at 125


def test_a_spike_shorter_than_n_minutes_does_not_fire():
    values = noisy(100, 180, sigma=1.0)
    values[120:122] = 400
    assert alerts(values, first=60) == ([], [])


def test_a_normal_daily_cycle_does_not_fire():
    values = daily(10)
    opened, _ = alerts(values, first=7 * DAY)
    assert opened == []


def test_a_level_shift_fires():
    values = noisy(100, 240, sigma=2.0)
    values[150:] += 40
    opened, _ = alerts(values, first=60)
    assert opened == [152]


def test_a_drop_fires_too():
    values = noisy(100, 240, sigma=2.0)
    values[150:160] = 20
    opened, _ = alerts(values, first=60)
    assert opened == [152]


def test_the_seasonal_baseline_serves_once_enough_past_days_have_data():
    values = daily(5)
    column = values.reshape(-1, 1)
    minutes = M0 + np.arange(len(column))
    targets = M0 + np.array([DAY + 600, 2 * DAY + 600, 3 * DAY + 600, 4 * DAY + 600])
    # Day 1 and 2 have one and two past days: trailing; day 3 onwards: seasonal (SEASON_MIN_DAYS = 3).
    assert METHOD.season_min_days == 3
    assert seasonal(column, minutes, targets).ok[:, 0].tolist() == [False, False, True, True]


def test_a_daily_step_is_expected_with_history_and_unusual_without():
    # Every day at 09:00 a batch job triples the value for an hour.
    t = np.arange(6 * DAY)
    values = np.where((t % DAY >= 540) & (t % DAY < 600), 300.0, 100.0) * np.random.default_rng(3).lognormal(
        0, 0.02, len(t)
    )
    day5 = 5 * DAY
    opened_seasonal, _ = alerts(values, first=day5 + 300)
    assert [m for m in opened_seasonal if m < day5 + 700] == []
    # Only the last hours exist (a new series): the same step is unusual.
    opened_trailing, _ = alerts(values[day5 - 120 :], first=60)
    assert opened_trailing and opened_trailing[0] == 120 + 540 + 2


def test_the_mad_floor_keeps_a_flat_series_quiet_on_small_wiggles():
    values = np.full(120, 100.0)
    values[90:100] = 101.0  # 1 %: MAD is 0, so without the floor this scores infinity
    column = values.reshape(-1, 1)
    minutes = M0 + np.arange(120)
    base = baseline(column, minutes, minutes[60:])
    assert base.mad[0, 0] == METHOD.mad_floor_ratio * 100.0 == 3.0
    assert alerts(values, first=60) == ([], [])
    values[90:100] = 120.0  # 20 %: z = 0.6745 * 20 / 3 = 4.5, under k = 5
    assert alerts(values, first=60) == ([], [])
    values[90:100] = 130.0  # 30 %: z = 6.7
    assert alerts(values, first=60)[0] == [92]


def test_hysteresis_holds_the_alert_while_the_score_stays_between_the_bounds():
    values = noisy(100, 240, sigma=1.0, seed=4)
    values[120:125] = 400
    # After the spike the series sits at z = 0.6745 * 12 / 3 = 2.7 (the MAD floor, 3 % of 100, is
    # above this noise's MAD): between the resolve bound k/2 = 2.5 and k = 5, for 15 minutes.
    values[125:140] = 112.0
    opened, resolved = alerts(values, first=60)
    assert opened == [122]
    assert resolved == [140 + METHOD.resolve_minutes - 1]


def test_a_series_without_enough_history_scores_nothing():
    values = noisy(100, 10, sigma=1.0)
    column = values.reshape(-1, 1)
    minutes = M0 + np.arange(10)
    base = baseline(column, minutes, minutes[5:])
    assert np.isnan(base.median).all()


def with_quiet_day(days: int, quiet: int, factor: float = 0.85) -> np.ndarray:
    values = daily(days)
    values[quiet * DAY : (quiet + 1) * DAY] *= factor
    return values


def test_a_quiet_day_15_percent_lower_all_day_does_not_fire():
    values = with_quiet_day(9, quiet=7)
    assert alerts(values, first=7 * DAY) == ([], [])


def test_a_quiet_day_20_percent_lower_fires_only_without_the_level_ratio():
    # What the level-adjusted baseline is for: the first version flapped through such days.
    from dataclasses import replace

    values = with_quiet_day(9, quiet=7, factor=0.8)
    column = values.reshape(-1, 1)
    minutes = M0 + np.arange(len(column))
    targets = minutes[7 * DAY :]
    for method, fires in ((replace(METHOD, level_max=0.0), True), (METHOD, False)):
        z = score(column[7 * DAY :], baseline(column, minutes, targets, method))
        moves = transitions(z, np.array([False]), np.array([5.0]), np.array([3]), method)
        assert bool(moves.opened.any()) is fires


def test_the_level_ratio_follows_the_last_hour_within_its_clamp():
    season = np.full((120, 2), 100.0)
    x = np.column_stack([np.full(120, 95.0), np.full(120, 50.0)])
    r = level_ratio(x, season)
    assert r.shape == (120 - METHOD.level_minutes, 2)
    assert r[0].tolist() == [0.95, 1 / (1 + METHOD.level_max)]  # a halving is not a new normal


def test_a_level_shift_on_a_daily_cycle_fires_within_n_minutes_and_is_not_absorbed():
    values = daily(9)
    onset = 7 * DAY + 600
    values[onset : onset + 240] *= 1.3
    opened, _ = alerts(values, first=7 * DAY)
    assert opened[0] == onset + 2  # the third minute of the shift


def test_a_drop_that_lasts_all_day_keeps_its_alert_open():
    # Unlike a quiet day, a halving exceeds the level ratio's clamp: no resolving until it recovers at midnight.
    values = daily(9)
    values[7 * DAY + 600 : 8 * DAY] *= 0.5
    opened, resolved = alerts(values, first=7 * DAY)
    assert opened == [7 * DAY + 602]
    assert len(resolved) == 1 and 8 * DAY < resolved[0] < 8 * DAY + 60


def _lookup_by_search(values: np.ndarray, minutes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    out = np.full((*wanted.shape, values.shape[1]), np.nan)
    row = {int(m): i for i, m in enumerate(minutes.tolist())}
    for index, m in np.ndenumerate(wanted):
        if int(m) in row:
            out[index] = values[row[int(m)]]
    return out


def test_lookup_finds_each_minutes_row_whether_the_minutes_are_dense_or_sparse():
    rng = np.random.default_rng(3)
    wanted = np.arange(-20, 1_100).reshape(40, 28)  # before, inside and after the rows, 2-D like seasonal()
    dense = np.sort(rng.choice(np.arange(1_000), size=900, replace=False))  # gaps, but mostly contiguous
    sparse = np.array([0, 7, 500, 999])  # far apart: the binary-search path
    for minutes in (dense, sparse):
        values = rng.normal(size=(len(minutes), 3))
        np.testing.assert_array_equal(lookup(values, minutes, wanted), _lookup_by_search(values, minutes, wanted))
