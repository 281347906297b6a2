"""Confidence intervals of the paper's figures: percentile bootstrap of the mean over seeds (Figs. 2, 3,
6, 9, 12: "95% bootstrapped confidence intervals of the mean"), Wilson intervals for win rates measured
over a number of episodes, and the area under a learning curve."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from acorm_pl.errors import require

_CHUNK_ELEMENTS = 4_000_000  # resampled values held in memory at once by bootstrap_band


def _check(confidence: float, n_resamples: int) -> None:
    require(0.0 < confidence < 1.0, f"confidence must be in (0, 1), got {confidence}")
    require(n_resamples >= 1, f"n_resamples must be a positive integer, got {n_resamples}")


def bootstrap_band(samples: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                   on_points: Callable[[int], None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap confidence band of the mean, column by column.

    ``samples`` is [n_samples, n_points] (e.g. seeds x evaluation steps); NaN marks a missing value, and
    each column uses the samples it has. Each column's interval is the (1 - confidence) / 2 and
    (1 + confidence) / 2 percentiles of the means of ``n_resamples`` resamples drawn with replacement.
    Returns ``(mean, low, high, count)``, each [n_points]; NaN where a column has no sample. Columns with
    the same missing pattern share the resample draws; ``on_points(k)`` reports progress.
    """
    _check(confidence, n_resamples)
    data = np.asarray(samples, dtype=np.float64)
    require(data.ndim == 2, f"samples must be [n_samples, n_points], got shape {data.shape}")
    present = ~np.isnan(data)
    count = present.sum(0)
    mean, low, high = (np.full(data.shape[1], np.nan) for _ in range(3))
    rng = np.random.default_rng(seed)
    q = [50 * (1 - confidence), 50 * (1 + confidence)]
    patterns, which = np.unique(present.T, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols = np.flatnonzero(which.reshape(-1) == p)
        rows = np.flatnonzero(pattern)
        if rows.size == 0:
            if on_points is not None:
                on_points(cols.size)
            continue
        idx = rng.integers(0, rows.size, size=(n_resamples, rows.size))
        chunk = max(1, _CHUNK_ELEMENTS // (n_resamples * rows.size))
        for start in range(0, cols.size, chunk):
            c = cols[start:start + chunk]
            block = data[np.ix_(rows, c)]  # [k, C]
            means = block[idx].mean(1)  # [n_resamples, C]
            mean[c] = block.mean(0)
            low[c], high[c] = np.percentile(means, q, axis=0)
            if on_points is not None:
                on_points(c.size)
    return mean, low, high, count


def bootstrap_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval ``(low, high)`` of the mean of ``values`` (e.g. one number per
    seed). Identical values give a zero-width interval; a single value gives ``(value, value)``."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    require(arr.size >= 1 and not np.isnan(arr).any(), "bootstrap_ci needs at least one value and no NaN")
    _, low, high, _ = bootstrap_band(arr, confidence, n_resamples, seed)
    return float(low[0]), float(high[0])


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a success probability from ``successes`` out of ``n`` trials (a win rate over
    ``n`` episodes). Unlike a bootstrap it does not collapse to zero width at 0 or n successes."""
    require(n >= 1 and 0 <= successes <= n, f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    _check(confidence, 1)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def area_under_curve(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """Normalised area under a curve: the trapezoid integral over ``steps`` divided by their span, i.e. the
    curve's average value over training (for a win rate, in [0, 1]). NaN values are left out; a single point
    gives its value."""
    x, y = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    require(x.size >= 1, "area_under_curve needs at least one value")
    if x.size == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2 / (x[-1] - x[0]))


def bootstrap_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of mean(a) - mean(b) for two independent samples (e.g. one
    final win rate per seed of two variants), each resampled with replacement on its own. For two different
    samples the interval of ``(b, a)`` is that of ``(a, b)`` negated, and neither depends on the order of the
    values within a sample."""
    _check(confidence, n_resamples)
    x, y = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    require(x.size >= 1 and y.size >= 1 and not (np.isnan(x).any() or np.isnan(y).any()),
            "bootstrap_diff_ci needs at least one value on each side and no NaN")
    # Resample the two sides in one fixed order whichever way round they are passed, so that a verdict at the
    # edge of the interval cannot flip with the argument order.
    flip = (x.size, tuple(x)) > (y.size, tuple(y))
    first, second = (y, x) if flip else (x, y)
    rng = np.random.default_rng(seed)
    diffs = (first[rng.integers(0, first.size, (n_resamples, first.size))].mean(1)
             - second[rng.integers(0, second.size, (n_resamples, second.size))].mean(1))
    if flip:
        diffs = -diffs
    low, high = np.percentile(diffs, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)
