"""Anomaly alerts: a value unusual for *this* series at *this* time of day.

The method (docs/alerts.md, "Anomaly detection", with its measured precision
and recall from bench/anomaly_eval.py):

- x is a series' per-minute mean (sum / count of its Rollup row).
- Baseline: the median and MAD of the same minute of day, +-season_half_width
  minutes, on each of the last season_days days when at least
  season_min_days of them have data (seasonal), both scaled by the recent
  level (the median of x / seasonal median over the last level_minutes,
  clamped to +-level_max); otherwise of the trailing_minutes before x.
- Score: the modified z-score of Iglewicz & Hoaglin (1993),
  z = 0.6745 (x - expected) / MAD, with the MAD floored at mad_floor_ratio of
  |expected| so a flat series does not turn noise into huge scores.
- An anomaly alert opens when |z| > k for N consecutive minutes (k and N per
  AlertRule), and resolves once |z| < k * RESOLVE_RATIO for RESOLVE_MINUTES
  consecutive minutes (a minute without data counts as calm).

Everything is vectorised over a minutes x series matrix. Past days' statistics
are cached per hour and recent values extended each run (SeasonCache,
RecentCache), so a run reads only the last few minutes of each series. Decisions are
derived from the scores of a short window, not from counters, so evaluating
the same minute twice (two server instances, a restart) changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.db import IntegrityError, connection, transaction
from numpy.lib.stride_tricks import sliding_window_view

from metrics import events
from metrics.alerts import notify
from metrics.kinds import KINDS
from metrics.models import Alert, AlertRule
from metrics.series import rollups

log = logging.getLogger(__name__)

DAY = 1440  # minutes
CONSISTENCY = 0.6745  # MAD of a normal distribution is 0.6745 sigma


@dataclass(frozen=True, slots=True)
class Method:
    season_days: int = 7
    season_half_width: int = 5
    season_min_days: int = 3
    level_minutes: int = 60
    level_max: float = 0.1  # the level ratio stays within [1 / (1 + level_max), 1 + level_max]
    trailing_minutes: int = 60
    trailing_min_samples: int = 15
    mad_floor_ratio: float = 0.03
    mad_floor_abs: float = 1e-9
    resolve_ratio: float = 0.5
    resolve_minutes: int = 15
    max_catch_up: int = 60  # minutes evaluated at most per call after a pause

    @property
    def history(self) -> int:
        """Minutes before a target whose values its baseline reads (level ratio, trailing window)."""
        return max(self.level_minutes, self.trailing_minutes)


METHOD = Method()
DEFAULT_K = 5.0
DEFAULT_MINUTES = 3


# --- The method: pure numpy -------------------------------------------------


def nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """Median ignoring NaN along `axis` (NaN where all are NaN); one sort, unlike np.nanmedian's masked path."""
    s = np.sort(a, axis=axis)  # NaN sorts last
    n = np.sum(~np.isnan(a), axis=axis, keepdims=True)
    lo = np.maximum((n - 1) // 2, 0)
    hi = np.maximum(n // 2, 0)
    med = (np.take_along_axis(s, lo, axis) + np.take_along_axis(s, hi, axis)) / 2
    return np.squeeze(med, axis)


@dataclass
class Seasonal:
    """Per (minute, series): median and MAD of the same minute of day on past days; ok where enough days had data."""

    median: np.ndarray
    mad: np.ndarray
    ok: np.ndarray

    def __getitem__(self, rows: slice) -> Seasonal:
        return Seasonal(self.median[rows], self.mad[rows], self.ok[rows])


@dataclass
class Baseline:
    """Per (target minute, series): expected value, floored MAD, and whether the seasonal history served."""

    median: np.ndarray
    mad: np.ndarray
    seasonal: np.ndarray

    def band(self, k: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = np.asarray(k) * self.mad / CONSISTENCY
        return self.median - half, self.median + half


def lookup(values: np.ndarray, minutes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """values[row of minute m] for every m in `wanted` (any shape), NaN where that minute has no row."""
    if not len(minutes):
        return np.full((*wanted.shape, values.shape[1]), np.nan)
    span = int(minutes[-1] - minutes[0]) + 1
    if span <= 4 * len(minutes):
        # Minute rollups are nearly contiguous, so a dense copy indexed by minute
        # turns a binary search per sample into one gather: a week's chart band
        # looks up ~780 k samples (10 k minutes x 7 days x 11 minutes of season).
        dense = np.full((span + 1, values.shape[1]), np.nan)  # the extra last row answers "no row"
        dense[minutes - minutes[0]] = values
        offset = wanted - minutes[0]
        return dense[np.where((offset >= 0) & (offset < span), offset, span)]
    pos = np.searchsorted(minutes, wanted)
    pos_c = np.minimum(pos, len(minutes) - 1)
    hit = (pos < len(minutes)) & (minutes[pos_c] == wanted)
    return np.where(hit[..., None], values[pos_c], np.nan)


def _median_mad(samples: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    med = nanmedian(samples, axis=axis)
    mad = nanmedian(np.abs(samples - np.expand_dims(med, axis)), axis=axis)
    return med, mad


def seasonal(values: np.ndarray, minutes: np.ndarray, targets: np.ndarray, method: Method = METHOD) -> Seasonal:
    """Seasonal statistics of `targets` (minute numbers) from `values` (rows = sorted `minutes`, columns = series)."""
    days = np.arange(1, method.season_days + 1)
    width = np.arange(-method.season_half_width, method.season_half_width + 1)
    offsets = (-days[:, None] * DAY + width[None, :]).ravel()
    samples = lookup(values, minutes, targets[:, None] + offsets[None, :])
    t, _, s = samples.shape
    per_day = samples.reshape(t, len(days), len(width), s)
    days_with_data = np.sum(np.any(~np.isnan(per_day), axis=2), axis=1)
    med, mad = _median_mad(samples, axis=1)
    return Seasonal(med, mad, days_with_data >= method.season_min_days)


def _windows(a: np.ndarray, width: int) -> np.ndarray:
    """(rows, S) -> (rows - width, S, width): for output row i, the `width` rows before input row i + width."""
    return sliding_window_view(a[:-1], width, axis=0)


def level_ratio(x: np.ndarray, season_median: np.ndarray, method: Method = METHOD) -> np.ndarray:
    """Recent level / seasonal level for rows level_minutes.. of x: the median of x / seasonal median over the
    level_minutes before, clamped; 1 where fewer than half of those minutes have data."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(season_median > 0, x / season_median, np.nan)
    w = _windows(q, method.level_minutes)
    r = nanmedian(w, axis=2)
    enough = np.sum(~np.isnan(w), axis=2) * 2 >= method.level_minutes
    return np.where(enough, np.clip(r, 1 / (1 + method.level_max), 1 + method.level_max), 1.0)


def assemble(x: np.ndarray, season: Seasonal, method: Method = METHOD) -> Baseline:
    """Baselines of rows history.. of contiguous minutes: x (values) and season (its seasonal statistics) cover
    method.history minutes before the first target too.

    Seasonal where enough past days have data: the seasonal median and MAD scaled by the recent level ratio.
    Otherwise trailing: median and MAD of the trailing_minutes before.
    """
    h = method.history
    r = level_ratio(x[h - method.level_minutes :], season.median[h - method.level_minutes :], method)
    w = _windows(x[h - method.trailing_minutes :], method.trailing_minutes)
    t_med, t_mad = _median_mad(w, axis=2)
    trailing_ok = np.sum(~np.isnan(w), axis=2) >= method.trailing_min_samples
    now = season[h:]
    med = np.where(now.ok, r * now.median, np.where(trailing_ok, t_med, np.nan))
    mad = np.where(now.ok, r * now.mad, np.where(trailing_ok, t_mad, np.nan))
    floor = np.maximum(method.mad_floor_ratio * np.abs(med), method.mad_floor_abs)
    return Baseline(median=med, mad=np.maximum(mad, floor), seasonal=now.ok)


def baseline(values: np.ndarray, minutes: np.ndarray, targets: np.ndarray, method: Method = METHOD) -> Baseline:
    """Baselines of contiguous `targets` (minute numbers) from `values` (rows = sorted `minutes`, columns = series)."""
    ext = np.arange(targets[0] - method.history, targets[-1] + 1)
    if len(ext) != len(targets) + method.history:
        raise ValueError("targets must be contiguous minutes")
    return assemble(lookup(values, minutes, ext), seasonal(values, minutes, ext, method), method)


def score(x: np.ndarray, base: Baseline) -> np.ndarray:
    """Modified z-score of x (T, S) against its baseline; NaN where either is unknown."""
    return CONSISTENCY * (x - base.median) / base.mad


def run_length(mask: np.ndarray) -> np.ndarray:
    """Consecutive True values ending at each row (axis 0)."""
    idx = np.arange(mask.shape[0])[:, None]
    last_false = np.maximum.accumulate(np.where(mask, -1, idx), axis=0)
    return idx - last_false


@dataclass
class Transitions:
    opened: np.ndarray  # (T, S) bool: an alert opens at this minute
    resolved: np.ndarray  # (T, S) bool
    hot: np.ndarray  # (T, S) bool: |z| > k
    calm_run: np.ndarray  # (T, S) int
    firing: np.ndarray  # (S,) bool after the last minute


def transitions(
    z: np.ndarray,
    firing: np.ndarray,
    k: np.ndarray,
    n: np.ndarray,
    method: Method = METHOD,
    start: int = 0,
) -> Transitions:
    """Walk minutes start.. of z (T, S) from the `firing` state; earlier rows only feed the run lengths."""
    absz = np.abs(np.nan_to_num(z, nan=0.0))
    hot = absz > k
    calm = absz < k * method.resolve_ratio
    hot_run = run_length(hot)
    calm_run = run_length(calm)
    opened = np.zeros_like(hot)
    resolved = np.zeros_like(hot)
    state = firing.copy()
    for t in range(start, z.shape[0]):
        opened[t] = ~state & (hot_run[t] >= n)
        resolved[t] = state & (calm_run[t] >= method.resolve_minutes)
        state = (state | opened[t]) & ~resolved[t]
    return Transitions(opened, resolved, hot, calm_run, state)


# --- Configuration ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    k: float
    minutes: int


def anomaly_settings() -> tuple[dict[str, Setting], dict[tuple[str, str], Setting | None]]:
    """(per metric type default, per (service, metric_type) override or None when it turns anomalies off)."""
    defaults: dict[str, Setting] = {}
    overrides: dict[tuple[str, str], Setting | None] = {}
    for rule in AlertRule.objects.all():
        setting = Setting(rule.anomaly_k, rule.anomaly_minutes) if rule.anomaly else None
        if rule.service:
            overrides[(rule.service, rule.metric_type)] = setting
        elif setting is not None:
            defaults[rule.metric_type] = setting
    return defaults, overrides


def setting_for(service: str, metric_type: str, defaults: dict, overrides: dict) -> Setting | None:
    if (service, metric_type) in overrides:
        return overrides[(service, metric_type)]
    return defaults.get(metric_type)


# --- Reading rollups ---------------------------------------------------------------


def _minute_number(dt: datetime) -> int:
    return int(dt.timestamp()) // 60


def _at(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def season_ranges(first: int, last: int, method: Method = METHOD) -> list[tuple[int, int]]:
    """Minute ranges [a, b) on past days whose rollups the seasonal statistics of minutes first..last read."""
    hw = method.season_half_width
    return [(first - d * DAY - hw, last - d * DAY + hw + 1) for d in range(method.season_days, 0, -1)]


@dataclass
class Matrix:
    keys: list[tuple[str, str]]  # column -> (service, metric_type)
    minutes: np.ndarray  # row -> minute number, sorted
    values: np.ndarray  # (rows, columns) per-minute mean, NaN where missing

    def columns(self, keys: list[tuple[str, str]]) -> np.ndarray:
        """values with one column per key, in that order (NaN for a key without rows)."""
        index = {key: i for i, key in enumerate(self.keys)}
        padded = np.concatenate([self.values, np.full((len(self.minutes), 1), np.nan)], axis=1)
        return padded[:, [index.get(key, len(self.keys)) for key in keys]]


def fetch_matrix(
    ranges: list[tuple[int, int]], services: list[str] | None = None, metric_types: list[str] | None = None
) -> Matrix:
    """Per-minute means of every series in the given minute ranges: one query, one scatter into a matrix."""
    where = " OR ".join(["(minute >= %s AND minute < %s)"] * len(ranges))
    params: list[Any] = []
    for a, b in ranges:
        params.extend([rollups.db_ts(_at(a)), rollups.db_ts(_at(b))])
    sql = f"SELECT service, metric_type, {rollups.epoch_sql('minute')}, sum, count FROM metrics_rollup WHERE ({where})"
    if services:
        sql += f" AND service IN ({','.join(['%s'] * len(services))})"
        params.extend(services)
    if metric_types:
        sql += f" AND metric_type IN ({','.join(['%s'] * len(metric_types))})"
        params.extend(metric_types)
    with connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    if not rows:
        return Matrix([], np.array([], dtype=np.int64), np.empty((0, 0)))
    svc, mt, epoch, total, count = zip(*rows, strict=True)
    # A dict, not np.unique over joined strings: string arrays were most of this function's time.
    index: dict[tuple[str, str], int] = {}
    column = np.fromiter((index.setdefault(key, len(index)) for key in zip(svc, mt, strict=True)), np.int64, len(rows))
    minute = np.rint(np.array(epoch, dtype=np.float64) / 60).astype(np.int64)
    minutes, row = np.unique(minute, return_inverse=True)
    values = np.full((len(minutes), len(index)), np.nan)
    counts = np.array(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values[row, column] = np.where(counts > 0, np.array(total, dtype=np.float64) / counts, np.nan)
    return Matrix(list(index), minutes, values)


# --- In-process caches: what makes one evaluation a few thousand rows ------------------

HOUR = 60
RECENT_REFRESH = 5  # recent minutes re-read every run: a late point recomputes its minute's rollup


class SeasonCache:
    """Seasonal statistics per hour of minutes, computed once per hour from one query for all series.

    They read only past days, which do not change, so an hour's block serves every
    evaluation of that hour; a series first seen mid-hour gets its columns then.
    """

    def __init__(self, method: Method = METHOD) -> None:
        self.method = method
        self.blocks: dict[int, tuple[dict[tuple[str, str], int], Seasonal]] = {}
        self.refreshes = 0

    def read(self, keys: list[tuple[str, str]], first: int, last: int) -> Seasonal:
        """Seasonal statistics of minutes first..last (rows) for `keys` (columns)."""
        hours = range(first // HOUR, last // HOUR + 1)
        for h in [h for h in self.blocks if h < hours[0]]:
            del self.blocks[h]
        parts = []
        for h in hours:
            index, block = self.blocks.get(h, ({}, None))
            missing = [key for key in keys if key not in index]
            if missing or block is None:
                index, block = self._extend(h, index, block, missing or keys)
            cols = [index[key] for key in keys]
            lo, hi = max(first, h * HOUR) - h * HOUR, min(last, h * HOUR + HOUR - 1) - h * HOUR + 1
            parts.append(Seasonal(block.median[lo:hi, cols], block.mad[lo:hi, cols], block.ok[lo:hi, cols]))
        return Seasonal(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("median", "mad", "ok")))

    def _extend(
        self, hour: int, index: dict[tuple[str, str], int], block: Seasonal | None, keys: list[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], int], Seasonal]:
        self.refreshes += 1
        a, b = hour * HOUR, hour * HOUR + HOUR - 1
        few = block is not None and len(keys) <= 50
        matrix = fetch_matrix(
            season_ranges(a, b, self.method),
            sorted({s for s, _ in keys}) if few else None,
            sorted({m for _, m in keys}) if few else None,
        )
        fresh = seasonal(matrix.columns(keys), matrix.minutes, np.arange(a, b + 1), self.method)
        if block is not None:
            fresh = Seasonal(
                *(np.concatenate([getattr(block, f), getattr(fresh, f)], axis=1) for f in ("median", "mad", "ok"))
            )
        index = {**index, **{key: len(index) + i for i, key in enumerate(keys)}}
        self.blocks[hour] = (index, fresh)
        return index, fresh


class RecentCache:
    """The per-minute means of every series over the last couple of hours, extended each run by the new minutes."""

    def __init__(self) -> None:
        self.matrix: Matrix | None = None
        self.rows_read = 0

    def read(self, first: int, last: int) -> Matrix:
        """Every series' values at minutes first..last (contiguous rows)."""
        m = self.matrix
        if m is None or first < m.minutes[0] or first > m.minutes[-1] + 1:
            keys, values, start = [], np.empty((0, 0)), first
        else:
            keep = m.minutes >= first
            keys, values, start = (
                m.keys,
                m.values[keep],
                max(first, min(int(m.minutes[-1]) + 1, last) - RECENT_REFRESH + 1),
            )
        fresh = fetch_matrix([(start, last + 1)])
        self.rows_read += int(np.sum(~np.isnan(fresh.values)))
        known = set(keys)
        keys = keys + [key for key in fresh.keys if key not in known]
        minutes = np.arange(first, max(last, first + len(values) - 1) + 1)
        out = np.full((len(minutes), len(keys)), np.nan)
        out[: len(values), : values.shape[1]] = values
        out[start - first : last - first + 1] = np.nan  # the fresh read is the truth for its minutes
        out[fresh.minutes - first] = fresh.columns(keys)
        alive = np.any(~np.isnan(out), axis=0)  # a series silent for the whole span leaves the cache
        self.matrix = Matrix([k for k, a in zip(keys, alive, strict=True) if a], minutes, out[:, alive])
        rows = slice(0, last - first + 1)
        return Matrix(self.matrix.keys, minutes[rows], self.matrix.values[rows])


@dataclass
class Caches:
    season: SeasonCache
    recent: RecentCache
    last_evaluated: int | None = None  # the last minute number evaluate() scored


def _new_caches() -> Caches:
    return Caches(SeasonCache(), RecentCache())


_caches = _new_caches()  # per process; each instance keeps its own (they hold no decisions, only inputs)


# --- Evaluation: the maintenance runner calls evaluate() once a minute ------------


@dataclass
class EvaluationReport:
    minutes: int = 0
    series: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0


def reset() -> None:
    global _caches
    _caches = _new_caches()


def evaluate(method: Method = METHOD) -> EvaluationReport:
    """Score the minutes completed (rolled up) since the last call and open/update/resolve anomaly alerts."""
    boundary = rollups.rolled_through()
    if boundary is None:
        return EvaluationReport()
    last = _minute_number(boundary) - 1
    done = _caches.last_evaluated
    first = last if done is None else max(done + 1, last - method.max_catch_up + 1)
    if first > last:
        return EvaluationReport()
    report = evaluate_minutes(first, last, method)
    _caches.last_evaluated = last
    return report


def evaluate_minutes(first: int, last: int, method: Method = METHOD) -> EvaluationReport:
    """Evaluate minutes first..last (minute numbers); safe to repeat."""
    defaults, overrides = anomaly_settings()
    report = EvaluationReport(minutes=last - first + 1)
    if not defaults and not any(overrides.values()):
        return report
    lookback = max(DEFAULT_MINUTES, method.resolve_minutes, *(s.minutes for s in defaults.values()))
    lookback = max(lookback, *(s.minutes for s in overrides.values() if s is not None), 1)
    window_first = first - lookback + 1
    ext_first = window_first - method.history
    caches = _caches if method == _caches.season.method else Caches(SeasonCache(method), RecentCache())
    recent = caches.recent.read(ext_first, last)
    firing_now = {(a.service, a.metric_type): a for a in Alert.objects.firing().filter(kind=Alert.ANOMALY)}
    # A firing series silent for the whole span still gets a (NaN, hence calm) column, so it resolves.
    known = set(recent.keys)
    all_keys = recent.keys + [key for key in firing_now if key not in known]
    values_all = recent.columns(all_keys)
    has_recent = np.any(~np.isnan(values_all[first - ext_first :]), axis=0)
    active: list[int] = []
    settings_of: list[Setting] = []
    for col, key in enumerate(all_keys):
        setting = setting_for(*key, defaults, overrides)
        if setting is not None and (has_recent[col] or key in firing_now):
            active.append(col)
            settings_of.append(setting)
    report.series = len(active)
    targets = np.arange(window_first, last + 1)
    if active:
        keys = [all_keys[c] for c in active]
        values = values_all[:, active]
        base = assemble(values, caches.season.read(keys, ext_first, last), method)
        x = values[method.history :]
        z = score(x, base)
        k = np.array([s.k for s in settings_of])
        n = np.array([s.minutes for s in settings_of])
        firing = np.array([key in firing_now for key in keys])
        moves = transitions(z, firing, k, n, method, start=first - window_first)
        changed = _apply(keys, targets, x, z, base, k, moves, firing_now, first - window_first, report)
    else:
        changed = []
    # A firing alert whose series lost its rule resolves too.
    covered = {all_keys[c] for c in active}
    for key, alert in firing_now.items():
        if key not in covered and setting_for(*key, defaults, overrides) is None:
            with transaction.atomic():
                alert.resolve(_at(last + 1))
                notify.enqueue([alert], known_ids={alert.pk})  # outbox, same transaction
            report.resolved += 1
            changed.append(alert)
    if changed:
        _publish(changed)
    return report


def _apply(
    keys: list[tuple[str, str]],
    targets: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    base: Baseline,
    k: np.ndarray,
    moves: Transitions,
    firing_now: dict[tuple[str, str], Alert],
    start: int,
    report: EvaluationReport,
) -> list[Alert]:
    changed: list[Alert] = []
    moved = np.any(moves.opened[start:] | moves.resolved[start:], axis=0) | moves.firing
    touched = sorted(set(np.flatnonzero(moved).tolist()) | {i for i, key in enumerate(keys) if key in firing_now})
    known = {a.pk for a in firing_now.values()}
    for col in touched:
        key = keys[col]
        alert = firing_now.get(key)
        before = len(changed)
        with transaction.atomic():
            _walk(col, key, alert, start, targets, x, z, base, k, moves, changed, report)
            # Outbox rows in the transaction that changed the alerts, as for thresholds.
            notify.enqueue(changed[before:], known_ids=known)
    return changed


def _walk(
    col: int,
    key: tuple[str, str],
    alert: Alert | None,
    start: int,
    targets: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    base: Baseline,
    k: np.ndarray,
    moves: Transitions,
    changed: list[Alert],
    report: EvaluationReport,
) -> None:
    """One series' minutes in order: open, update, escalate and resolve its anomaly alert."""
    for t in range(start, len(targets)):
        minute = int(targets[t])
        if alert is None and moves.opened[t, col]:
            alert = _open(key, minute, t, col, targets, x, z, base, k, moves)
            if alert is not None:
                report.opened += 1
                changed.append(alert)
            continue
        if alert is None:
            continue
        if moves.hot[t, col] and _at(minute) > alert.last_breach_at:
            alert.latest_value = float(x[t, col])
            alert.last_breach_at = _at(minute)
            alert.breach_count += 1
            alert.healthy_count = 0
            if abs(z[t, col]) >= 2 * k[col] and alert.severity == Alert.WARNING:
                alert.severity = Alert.CRITICAL
                alert.message = _message(key, float(x[t, col]), float(z[t, col]), base, k, t, col)
                if alert not in changed:
                    changed.append(alert)
            alert.save()
            report.updated += 1
        elif not moves.hot[t, col] and _at(minute) > alert.last_breach_at:
            if not np.isnan(x[t, col]):
                alert.latest_value = float(x[t, col])
            alert.healthy_count = int(moves.calm_run[t, col])
            if moves.resolved[t, col]:
                alert.state = Alert.RESOLVED
                alert.resolved_at = _at(minute + 1)
                report.resolved += 1
                if alert not in changed:
                    changed.append(alert)
            alert.save()
            if alert.state == Alert.RESOLVED:
                alert = None


def _message(key: tuple[str, str], value: float, z: float, base: Baseline, k: np.ndarray, t: int, col: int) -> str:
    service, metric_type = key
    lo, hi = base.band(k[col])
    kind = KINDS.get(metric_type)
    unit = kind.suffix if kind is not None else ""
    source = "same time on past days" if base.seasonal[t, col] else "last hour"
    return (
        f"{service} {metric_type} {value:.4g}{unit} unusual: expected {lo[t, col]:.4g}-{hi[t, col]:.4g}{unit}"
        f" ({source}), score {z:+.1f}"
    )[:255]


def _open(
    key: tuple[str, str],
    minute: int,
    t: int,
    col: int,
    targets: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    base: Baseline,
    k: np.ndarray,
    moves: Transitions,
) -> Alert | None:
    service, metric_type = key
    run = 1
    while t - run >= 0 and moves.hot[t - run, col]:
        run += 1
    value, zt = float(x[t, col]), float(z[t, col])
    lo, hi = base.band(k[col])
    above = zt > 0
    try:
        with transaction.atomic():
            return Alert.objects.create(
                kind=Alert.ANOMALY,
                service=service,
                metric_type=metric_type,
                severity=Alert.CRITICAL if abs(zt) >= 2 * k[col] else Alert.WARNING,
                value=value,
                latest_value=value,
                threshold=float(hi[t, col] if above else lo[t, col]),
                direction=AlertRule.ABOVE if above else AlertRule.BELOW,
                message=_message(key, value, zt, base, k, t, col),
                started_at=_at(int(targets[t - run + 1])),
                last_breach_at=_at(minute),
                breach_count=run,
            )
    except IntegrityError:
        return None  # another instance opened it for the same minutes


def _publish(alerts: list[Alert]) -> None:
    events.announce_on_commit([], [dict(a.to_dict()) for a in alerts])


# --- The expected band for charts ------------------------------------------------

MAX_BAND_MINUTES = 8 * DAY  # a week's chart and a little; longer ranges get no band


def expected_band(service: str, metric_type: str, start: datetime, end: datetime, step_seconds: int) -> dict | None:
    """Expected value and +- k MAD/0.6745 of one series at chart buckets in [start, end); None without data."""
    defaults, overrides = anomaly_settings()
    setting = setting_for(service, metric_type, defaults, overrides) or Setting(DEFAULT_K, DEFAULT_MINUTES)
    step = max(1, step_seconds // 60)
    first = -(-_minute_number(start) // step) * step
    last = _minute_number(end - timedelta(microseconds=1))
    if last < first or last - first + 1 > MAX_BAND_MINUTES:
        return None
    # The level ratio needs every minute before a target, so the baseline runs per minute, then is sampled.
    minutes = np.arange(first, last + 1)
    ranges = [(first - METHOD.history - METHOD.season_days * DAY - METHOD.season_half_width, last + 1)]
    matrix = fetch_matrix(ranges, [service], [metric_type])
    if not matrix.keys:
        return None
    base = baseline(matrix.columns([(service, metric_type)]), matrix.minutes, minutes)
    lo, hi = base.band(setting.k)
    pick = slice(None, None, step)
    points = [
        {"x": int(m) * 60000, "y": float(h), "lo": float(low), "median": float(med)}
        for m, low, h, med in zip(
            minutes[pick].tolist(),
            lo[pick, 0].tolist(),
            hi[pick, 0].tolist(),
            base.median[pick, 0].tolist(),
            strict=True,
        )
        if med == med
    ]
    return {"k": setting.k, "statistic": "mean per minute", "data": points} if points else None
