"""A mergeable, log-bucketed percentile sketch (DDSketch-style), vectorised with numpy.

A value v > 0 falls in bucket ceil(log_gamma(v)) with gamma = (1 + a) / (1 - a);
every value in a bucket is within relative accuracy `a` of the bucket's
representative 2 * gamma**i / (gamma + 1). Values below MIN_INDEXABLE (zero
error rates, idle CPU) share one zero bucket. Merging two sketches adds their
bucket counts, so a P99 over a week is the P99 of the merged minutes, with the
same 1 % bound as one minute.

Serialised form: a packed array of (int16 bucket index, uint32 count) records,
little-endian. Many blobs can be concatenated and decoded with one
np.frombuffer, which is what makes merging thousands of minutes cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LOG_GAMMA = float(np.log(GAMMA))
MIN_INDEXABLE = 1e-9
ZERO_INDEX = -32768
MAX_INDEX = 32767
RECORD = np.dtype([("i", "<i2"), ("c", "<u4")])


def bucket_indices(values: np.ndarray) -> np.ndarray:
    """Bucket index of each value (values must be finite and >= 0)."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.full(values.shape, ZERO_INDEX, dtype=np.int32)
    positive = values >= MIN_INDEXABLE
    if positive.any():
        raw = np.ceil(np.log(values[positive]) / LOG_GAMMA)
        idx[positive] = np.clip(raw, ZERO_INDEX + 1, MAX_INDEX).astype(np.int32)
    return idx


def representative(indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices)
    out = 2.0 * np.power(GAMMA, indices.astype(np.float64)) / (GAMMA + 1.0)
    return np.where(indices == ZERO_INDEX, 0.0, out)


def encode(values: Sequence[float] | np.ndarray) -> bytes:
    idx = bucket_indices(np.asarray(values, dtype=np.float64))
    uniq, counts = np.unique(idx, return_counts=True)
    rec = np.empty(len(uniq), dtype=RECORD)
    rec["i"] = uniq
    rec["c"] = counts
    return rec.tobytes()


def encode_counts(indices: np.ndarray, counts: np.ndarray) -> bytes:
    """Serialise pre-bucketed counts (used for OTLP histograms and merges)."""
    order = np.argsort(indices, kind="stable")
    idx = np.asarray(indices)[order]
    cnt = np.asarray(counts)[order]
    uniq, starts = np.unique(idx, return_index=True)
    sums = np.add.reduceat(cnt, starts) if len(cnt) else cnt
    rec = np.empty(len(uniq), dtype=RECORD)
    rec["i"] = uniq
    rec["c"] = sums
    return rec.tobytes()


def decode(blob: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype=RECORD)


def merge(blobs: Sequence[bytes | memoryview]) -> bytes:
    if not blobs:
        return b""
    rec = np.frombuffer(b"".join(bytes(b) for b in blobs), dtype=RECORD)
    return encode_counts(rec["i"].astype(np.int32), rec["c"].astype(np.int64))


def merge_groups(blobs: Sequence[bytes | memoryview], groups: np.ndarray, n_groups: int) -> list[bytes]:
    """`merge` of every blob that shares a group id, for all groups at once (same bytes as `merge` per group)."""
    if not n_groups:
        return []
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // RECORD.itemsize
    rec = np.frombuffer(b"".join(blobs), dtype=RECORD)
    group_of = np.repeat(np.asarray(groups, dtype=np.int64), lengths)
    # One sort of (group, bucket index) keys sums duplicates for every group.
    key = group_of * 65536 + (rec["i"].astype(np.int64) + 32768)
    uniq, inverse = np.unique(key, return_inverse=True)
    out = np.empty(len(uniq), dtype=RECORD)
    out["i"] = (uniq % 65536) - 32768
    out["c"] = np.bincount(inverse, weights=rec["c"].astype(np.float64), minlength=len(uniq))
    bounds = np.searchsorted(uniq // 65536, np.arange(n_groups + 1), side="left")
    raw = out.tobytes()
    size = RECORD.itemsize
    return [raw[a * size : b * size] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def count(blob: bytes | memoryview) -> int:
    return int(decode(blob)["c"].sum())


def grouped_quantiles(
    blobs: Sequence[bytes | memoryview],
    groups: np.ndarray,
    n_groups: int,
    quantiles: Sequence[float],
    mins: np.ndarray | None = None,
    maxs: np.ndarray | None = None,
) -> np.ndarray:
    """Quantiles of the merge of every blob that shares a group id.

    Returns an (n_groups, len(quantiles)) float array; NaN for empty groups.
    `mins`/`maxs` (per group) clamp the estimates: the sketch never answers a
    value outside what was observed.
    """
    out = np.full((n_groups, len(quantiles)), np.nan)
    if not len(blobs):
        return out
    # bytes.join takes memoryviews as they are: no per-blob copy.
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // RECORD.itemsize
    rec = np.frombuffer(b"".join(blobs), dtype=RECORD)
    if not len(rec):
        return out
    group_of = np.repeat(np.asarray(groups, dtype=np.int64), lengths)
    dense = _dense_quantiles(rec, group_of, n_groups, quantiles)
    if dense is not None:
        out = dense
        if mins is not None and maxs is not None:
            out = np.clip(out, np.asarray(mins)[:, None], np.asarray(maxs)[:, None])
        return out
    idx = rec["i"].astype(np.int64)
    # Sort records by (group, bucket index) and sum duplicates.
    key = group_of * 65536 + (idx + 32768)
    uniq_key, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse, weights=rec["c"].astype(np.float64))
    key_group = uniq_key // 65536
    key_index = (uniq_key % 65536) - 32768
    cum = np.cumsum(counts)
    # Start offset of each group inside the sorted key array.
    present, first = np.unique(key_group, return_index=True)
    last = np.append(first[1:], len(uniq_key)) - 1
    base = np.where(first > 0, cum[first - 1], 0.0)
    totals = cum[last] - base
    reps = representative(key_index)

    def value_at(rank: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(cum, base + rank, side="right")
        return reps[np.minimum(np.maximum(pos, first), last)]

    out[present] = _interpolate(value_at, totals, quantiles)
    if mins is not None and maxs is not None:
        out = np.clip(out, np.asarray(mins)[:, None], np.asarray(maxs)[:, None])
    return out


DENSE_MAX_CELLS = 4_000_000


def _dense_quantiles(
    rec: np.ndarray, group_of: np.ndarray, n_groups: int, quantiles: Sequence[float]
) -> np.ndarray | None:
    """The same answer as the sort-based merge, by counting into a (group, bucket) grid.

    Real series touch a few hundred distinct buckets, so the grid is small and
    one bincount replaces sorting every record (7 days x 5 series is ~2 M
    records): O(records + groups x buckets) instead of O(records log records).
    Returns None when the grid would be too large (values spanning many decades).
    """
    offset = rec["i"].astype(np.intp) + 32768
    seen = np.bincount(offset, minlength=65536) > 0
    n_buckets = int(seen.sum())
    if n_groups * n_buckets > DENSE_MAX_CELLS:
        return None
    position = np.cumsum(seen) - 1
    cells = np.bincount(
        group_of * n_buckets + position[offset], weights=rec["c"].astype(np.float64), minlength=n_groups * n_buckets
    ).reshape(n_groups, n_buckets)
    cum = np.cumsum(cells, axis=1)
    totals = cum[:, -1]
    reps = representative(np.flatnonzero(seen) - 32768)
    out = np.full((n_groups, len(quantiles)), np.nan)
    present = totals > 0
    if not present.any():
        return out
    cum, totals = cum[present], totals[present]
    # Each row of `cum` is non-decreasing; shifted by a stride above every total
    # the rows make one sorted array, so all groups are one searchsorted each.
    rows = np.arange(len(totals))
    shift = rows * (float(totals.max()) + 1.0)
    flat = (cum + shift[:, None]).ravel()

    def value_at(rank: np.ndarray) -> np.ndarray:
        # First bucket whose cumulative count exceeds the 0-based rank.
        pos = np.searchsorted(flat, rank + shift, side="right") - rows * n_buckets
        return reps[np.minimum(pos, n_buckets - 1)]

    out[present] = _interpolate(value_at, totals, quantiles)
    return out


def _interpolate(
    value_at: Callable[[np.ndarray], np.ndarray], totals: np.ndarray, quantiles: Sequence[float]
) -> np.ndarray:
    """(groups, quantiles) by numpy's default ("linear") definition applied to bucket values.

    The 0-based rank q * (n - 1) is interpolated between its two neighbours, so
    small samples agree with the exact answer as well as large ones do.
    """
    out = np.empty((len(totals), len(quantiles)))
    for qi, q in enumerate(quantiles):
        rank = q * (totals - 1)
        lo = np.floor(rank)
        frac = rank - lo
        hi = np.minimum(lo + 1, totals - 1)
        out[:, qi] = value_at(lo) * (1 - frac) + value_at(hi) * frac
    return out


def quantiles(blob: bytes | memoryview, qs: Sequence[float]) -> list[float]:
    res = grouped_quantiles([blob], np.zeros(1, dtype=np.int64), 1, qs)
    return [float(v) for v in res[0]]
