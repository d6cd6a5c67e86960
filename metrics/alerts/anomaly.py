"""Anomaly alerts: a value unusual for *this* series at *this* time of day.

The method (docs/alerts.md, "Anomaly detection", with its measured precision
and recall from bench/anomaly_eval.py):

- x is a series' per-minute mean (sum / count of its Rollup row).
- Baseline: the median and MAD of the same minute of day, +-SEASON_HALF_WIDTH
  minutes, on each of the last SEASON_DAYS days when at least SEASON_MIN_DAYS
  of them have data (seasonal); otherwise of the TRAILING_MINUTES before x.
- Score: the modified z-score of Iglewicz & Hoaglin (1993),
  z = 0.6745 (x - median) / MAD, with the MAD floored at MAD_FLOOR_RATIO of
  |median| so a flat series does not turn noise into huge scores.
- An anomaly alert opens when |z| > k for N consecutive minutes (k and N per
  AlertRule), and resolves once |z| < k * RESOLVE_RATIO for RESOLVE_MINUTES
  consecutive minutes (a minute without data counts as calm).

Everything is vectorised over a minutes x series matrix, so one evaluation of
every active series is one SQL query and a few numpy sorts. Decisions are
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

from metrics import events
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
    trailing_minutes: int = 60
    trailing_min_samples: int = 15
    mad_floor_ratio: float = 0.02
    mad_floor_abs: float = 1e-9
    resolve_ratio: float = 0.5
    resolve_minutes: int = 5
    max_catch_up: int = 60  # minutes evaluated at most per call after a pause


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
class Baseline:
    """Per (target minute, series): median, floored MAD, and whether the seasonal history served."""

    median: np.ndarray
    mad: np.ndarray
    seasonal: np.ndarray

    def band(self, k: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = np.asarray(k) * self.mad / CONSISTENCY
        return self.median - half, self.median + half


def lookup(values: np.ndarray, minutes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """values[row of minute m] for every m in `wanted` (any shape), NaN where that minute has no row."""
    pos = np.searchsorted(minutes, wanted)
    pos_c = np.minimum(pos, len(minutes) - 1)
    hit = (pos < len(minutes)) & (minutes[pos_c] == wanted) if len(minutes) else np.zeros(wanted.shape, bool)
    out = values[pos_c] if len(minutes) else np.full((*wanted.shape, values.shape[1]), np.nan)
    out = np.where(hit[..., None], out, np.nan)
    return out


def _median_mad(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """samples (T, K, S) -> median and MAD (T, S) over K."""
    med = nanmedian(samples, axis=1)
    mad = nanmedian(np.abs(samples - med[:, None, :]), axis=1)
    return med, mad


def baseline(values: np.ndarray, minutes: np.ndarray, targets: np.ndarray, method: Method = METHOD) -> Baseline:
    """Baselines of `targets` (minute numbers) from `values` (rows = sorted `minutes`, columns = series)."""
    days = np.arange(1, method.season_days + 1)
    width = np.arange(-method.season_half_width, method.season_half_width + 1)
    season_offsets = (-days[:, None] * DAY + width[None, :]).ravel()
    seasonal_samples = lookup(values, minutes, targets[:, None] + season_offsets[None, :])
    t, _, s = seasonal_samples.shape
    per_day = seasonal_samples.reshape(t, len(days), len(width), s)
    days_with_data = np.sum(np.any(~np.isnan(per_day), axis=2), axis=1)
    seasonal = days_with_data >= method.season_min_days

    trailing_offsets = -np.arange(method.trailing_minutes, 0, -1)
    trailing_samples = lookup(values, minutes, targets[:, None] + trailing_offsets[None, :])
    trailing_ok = np.sum(~np.isnan(trailing_samples), axis=1) >= method.trailing_min_samples

    s_med, s_mad = _median_mad(seasonal_samples)
    t_med, t_mad = _median_mad(trailing_samples)
    med = np.where(seasonal, s_med, np.where(trailing_ok, t_med, np.nan))
    mad = np.where(seasonal, s_mad, np.where(trailing_ok, t_mad, np.nan))
    floor = np.maximum(method.mad_floor_ratio * np.abs(med), method.mad_floor_abs)
    return Baseline(median=med, mad=np.maximum(mad, floor), seasonal=seasonal)


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


def needed_ranges(first: int, last: int, method: Method = METHOD) -> list[tuple[int, int]]:
    """Minute ranges [a, b) whose rollups the baselines and scores of minutes first..last read."""
    ranges = [(first - method.trailing_minutes, last + 1)]
    for d in range(1, method.season_days + 1):
        ranges.append((first - d * DAY - method.season_half_width, last - d * DAY + method.season_half_width + 1))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


@dataclass
class Matrix:
    keys: list[tuple[str, str]]  # column -> (service, metric_type)
    minutes: np.ndarray  # row -> minute number, sorted
    values: np.ndarray  # (rows, columns) per-minute mean, NaN where missing


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
    keys = np.char.add(np.char.add(np.array(svc, dtype=str), "\x1f"), np.array(mt, dtype=str))
    key_uniq, column = np.unique(keys, return_inverse=True)
    minute = np.rint(np.array(epoch, dtype=np.float64) / 60).astype(np.int64)
    minutes, row = np.unique(minute, return_inverse=True)
    values = np.full((len(minutes), len(key_uniq)), np.nan)
    counts = np.array(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values[row, column] = np.where(counts > 0, np.array(total, dtype=np.float64) / counts, np.nan)
    return Matrix([tuple(k.split("\x1f", 1)) for k in key_uniq.tolist()], minutes, values)  # type: ignore[misc]


# --- Evaluation: the maintenance runner calls evaluate() once a minute ------------


@dataclass
class EvaluationReport:
    minutes: int = 0
    series: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0


_last_evaluated: int | None = None  # per process: the last minute number evaluated


def reset() -> None:
    global _last_evaluated
    _last_evaluated = None


def evaluate(method: Method = METHOD) -> EvaluationReport:
    """Score the minutes completed (rolled up) since the last call and open/update/resolve anomaly alerts."""
    global _last_evaluated
    boundary = rollups.rolled_through()
    if boundary is None:
        return EvaluationReport()
    last = _minute_number(boundary) - 1
    first = last if _last_evaluated is None else max(_last_evaluated + 1, last - method.max_catch_up + 1)
    if first > last:
        return EvaluationReport()
    report = evaluate_minutes(first, last, method)
    _last_evaluated = last
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
    matrix = fetch_matrix(needed_ranges(window_first, last, method))
    firing_now = {(a.service, a.metric_type): a for a in Alert.objects.firing().filter(kind=Alert.ANOMALY)}
    active: list[int] = []
    settings_of: list[Setting] = []
    recent = (matrix.minutes >= first) & (matrix.minutes <= last)
    has_recent = np.any(~np.isnan(matrix.values[recent]), axis=0) if len(matrix.keys) else np.array([], bool)
    for col, key in enumerate(matrix.keys):
        setting = setting_for(*key, defaults, overrides)
        if setting is not None and (has_recent[col] or key in firing_now):
            active.append(col)
            settings_of.append(setting)
    report.series = len(active)
    targets = np.arange(window_first, last + 1)
    if active:
        values = matrix.values[:, active]
        base = baseline(values, matrix.minutes, targets, method)
        x = lookup(values, matrix.minutes, targets)
        z = score(x, base)
        k = np.array([s.k for s in settings_of])
        n = np.array([s.minutes for s in settings_of])
        keys = [matrix.keys[c] for c in active]
        firing = np.array([key in firing_now for key in keys])
        moves = transitions(z, firing, k, n, method, start=first - window_first)
        changed = _apply(keys, targets, x, z, base, k, moves, firing_now, first - window_first, report)
    else:
        changed = []
    # A firing alert whose series left the rollups entirely (or lost its rule) resolves too.
    covered = {matrix.keys[c] for c in active}
    for key, alert in firing_now.items():
        if key not in covered and setting_for(*key, defaults, overrides) is None:
            alert.resolve(_at(last + 1))
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
    for col in touched:
        key = keys[col]
        alert = firing_now.get(key)
        with transaction.atomic():
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
    return changed


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

MAX_BAND_TARGETS = 2000


def expected_band(service: str, metric_type: str, start: datetime, end: datetime, step_seconds: int) -> dict | None:
    """Median and median +- k MAD/0.6745 of one series at chart buckets in [start, end); None without data."""
    defaults, overrides = anomaly_settings()
    setting = setting_for(service, metric_type, defaults, overrides) or Setting(DEFAULT_K, DEFAULT_MINUTES)
    step = max(1, step_seconds // 60)
    first = -(-_minute_number(start) // step) * step
    targets = np.arange(first, _minute_number(end - timedelta(microseconds=1)) + 1, step)
    if not len(targets) or len(targets) > MAX_BAND_TARGETS:
        return None
    ranges = [(int(targets[0]) - METHOD.season_days * DAY - METHOD.season_half_width, int(targets[-1]) + 1)]
    matrix = fetch_matrix(ranges, [service], [metric_type])
    if not matrix.keys:
        return None
    base = baseline(matrix.values, matrix.minutes, targets)
    lo, hi = base.band(setting.k)
    points = [
        {"x": int(m) * 60000, "y": float(h), "lo": float(low), "median": float(med)}
        for m, low, h, med in zip(
            targets.tolist(), lo[:, 0].tolist(), hi[:, 0].tolist(), base.median[:, 0].tolist(), strict=True
        )
        if med == med
    ]
    return {"k": setting.k, "statistic": "mean per minute", "data": points} if points else None
