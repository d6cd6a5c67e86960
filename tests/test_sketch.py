"""The DDSketch-style percentile sketch: within 1 % of numpy's exact percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.series import sketch

QS = (0.5, 0.95, 0.99)
TOLERANCE = 0.01 + 1e-9


def assert_within_one_percent(blob: bytes, values: np.ndarray, qs=QS) -> None:
    estimates = sketch.quantiles(blob, qs)
    exact = np.quantile(values, qs)
    for q, est, ref in zip(qs, estimates, exact, strict=True):
        assert abs(est - ref) <= TOLERANCE * abs(ref), f"q={q}: {est} vs exact {ref}"


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.uniform(1, 1000, 200_000),
        lambda rng: rng.lognormal(4, 1.2, 200_000),  # latency-like, long tail
        lambda rng: rng.pareto(1.5, 200_000) * 10 + 0.5,  # heavy skew
        lambda rng: rng.exponential(0.01, 200_000),  # error rates: tiny values
    ],
    ids=["uniform", "lognormal", "pareto", "exponential"],
)
def test_it_is_within_one_percent_on_large_samples(make):
    values = make(np.random.default_rng(42))
    assert_within_one_percent(sketch.encode(values), values, qs=(0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999))


def test_merged_sketches_are_within_one_percent_of_the_union():
    rng = np.random.default_rng(7)
    # Minutes with very different shapes: merging must not smear them.
    parts = [rng.lognormal(mu, 0.5, rng.integers(1, 400)) for mu in rng.uniform(1, 7, 500)]
    merged = sketch.merge([sketch.encode(p) for p in parts])
    union = np.concatenate(parts)
    assert sketch.count(merged) == len(union)
    assert_within_one_percent(merged, union)


def test_merge_is_the_same_as_encoding_everything_at_once():
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(3, 1, 1000), rng.lognormal(5, 1, 1000)
    merged = sketch.decode(sketch.merge([sketch.encode(a), sketch.encode(b)]))
    direct = sketch.decode(sketch.encode(np.concatenate([a, b])))
    assert np.array_equal(merged, direct)


def test_grouped_quantiles_answer_each_group_from_its_own_blobs():
    rng = np.random.default_rng(11)
    low, high = rng.uniform(1, 10, 5000), rng.uniform(1000, 2000, 5000)
    blobs = [sketch.encode(low[:2500]), sketch.encode(high), sketch.encode(low[2500:])]
    out = sketch.grouped_quantiles(blobs, np.array([0, 1, 0]), 3, QS)
    assert np.allclose(out[0], np.quantile(low, QS), rtol=TOLERANCE)
    assert np.allclose(out[1], np.quantile(high, QS), rtol=TOLERANCE)
    assert np.isnan(out[2]).all()  # a group with no blobs has no answer


def test_small_samples_match_numpy_interpolation():
    values = np.array([10.0, 20.0, 30.0, 40.0])
    assert_within_one_percent(sketch.encode(values), values)
    single = np.array([123.4])
    assert sketch.quantiles(sketch.encode(single), QS) == pytest.approx([123.4] * 3, rel=0.01)


def test_zeros_are_exact():
    values = np.array([0.0] * 90 + [0.5] * 10)
    p50, p95, p99 = sketch.quantiles(sketch.encode(values), QS)
    assert p50 == 0.0
    assert p95 == pytest.approx(0.5, rel=0.01) and p99 == pytest.approx(0.5, rel=0.01)


def test_estimates_are_clamped_to_the_observed_min_and_max():
    values = np.array([100.0, 100.0, 100.0])
    out = sketch.grouped_quantiles([sketch.encode(values)], np.array([0]), 1, QS, np.array([100.0]), np.array([100.0]))
    assert (out == 100.0).all()


def test_the_blob_is_compact_and_round_trips():
    values = np.random.default_rng(1).lognormal(4, 1, 100_000)
    blob = sketch.encode(values)
    # A bucket per 2 % of dynamic range, 6 bytes each: far smaller than the data.
    assert len(blob) < 3000
    decoded = sketch.decode(blob)
    assert int(decoded["c"].sum()) == 100_000
    assert np.all(np.diff(decoded["i"].astype(np.int64)) > 0)


def test_values_span_the_whole_accepted_range():
    values = np.array([1e-6, 1e-3, 1.0, 1e6, 1e15])
    decoded = sketch.decode(sketch.encode(values))
    reps = sketch.representative(decoded["i"])
    assert np.allclose(np.sort(reps), values, rtol=0.01)
