"""The grid (bincount) merge in sketch.grouped_quantiles answers exactly what the sort-based merge does."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.series import sketch


def _random_blobs(rng: np.random.Generator, n_groups: int, n_blobs: int) -> tuple[list[bytes], np.ndarray]:
    blobs, groups = [], []
    for _ in range(n_blobs):
        n = int(rng.integers(1, 80))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            values = rng.lognormal(3, 1.5, n)
        elif kind == 1:
            values = np.where(rng.random(n) < 0.5, 0.0, rng.random(n))  # zero bucket mixed in
        else:
            values = rng.random(n) * 1e6
        blobs.append(sketch.encode(values))
        groups.append(int(rng.integers(0, n_groups)))
    return blobs, np.array(groups)


@pytest.mark.parametrize("seed", range(8))
def test_it_gives_the_same_quantiles_on_both_merge_paths(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(1, 40))
    blobs, groups = _random_blobs(rng, n_groups, int(rng.integers(1, 300)))
    qs = (0.0, 0.5, 0.95, 0.99, 1.0)
    grid = sketch.grouped_quantiles(blobs, groups, n_groups, qs)
    monkeypatch.setattr(sketch, "DENSE_MAX_CELLS", -1)  # force the sort-based path
    sort = sketch.grouped_quantiles(blobs, groups, n_groups, qs)
    assert np.array_equal(np.isnan(grid), np.isnan(sort))
    assert np.array_equal(grid[~np.isnan(grid)], sort[~np.isnan(sort)])


def test_it_accepts_memoryviews_as_stored_by_some_drivers():
    blob = sketch.encode(np.arange(1.0, 101.0))
    direct = sketch.grouped_quantiles([blob], np.zeros(1, dtype=np.int64), 1, (0.5,))
    viewed = sketch.grouped_quantiles([memoryview(blob)], np.zeros(1, dtype=np.int64), 1, (0.5,))
    assert direct[0, 0] == viewed[0, 0]
    assert abs(direct[0, 0] - 50.5) / 50.5 < 0.01
