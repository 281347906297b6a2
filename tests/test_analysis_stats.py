"""Confidence intervals: percentile bootstrap of the mean, Wilson intervals and the area under a curve."""

# ruff: noqa: I001  (acorm_pl must be imported before torch: it sets OMP_WAIT_POLICY)
from __future__ import annotations

import acorm_pl  # noqa: F401
import numpy as np
import pytest

from acorm_pl.analysis.stats import area_under_curve, bootstrap_band, bootstrap_ci, wilson_interval
from acorm_pl.errors import ConfigError


def test_constant_series_gives_a_zero_width_band():
    low, high = bootstrap_ci([0.4] * 5)
    assert low == high == pytest.approx(0.4)
    mean, lo, hi, count = bootstrap_band(np.full((5, 7), 0.25))
    assert np.array_equal(lo, hi) and np.allclose(mean, 0.25) and (count == 5).all()


def test_single_value_interval_is_the_value():
    assert bootstrap_ci([0.7]) == (pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    # 400 independent seeded experiments of 30 draws from N(1, 2^2), one column each; the percentile
    # bootstrap's 95% interval of the mean should contain 1 in about 95% of them (a little less at n = 30).
    rng = np.random.default_rng(123)
    samples = rng.normal(1.0, 2.0, size=(30, 400))
    _, low, high, _ = bootstrap_band(samples, n_resamples=2000, seed=1)
    coverage = float(((low <= 1.0) & (high >= 1.0)).mean())
    assert 0.90 <= coverage <= 0.98, coverage
    # the interval width matches the normal theory 2 * 1.96 * sigma / sqrt(n) on average
    assert float((high - low).mean()) == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(30), rel=0.1)


def test_band_uses_the_samples_each_column_has():
    samples = np.array([[0.0, 1.0, np.nan], [1.0, 1.0, np.nan], [np.nan, 1.0, np.nan]])
    mean, low, high, count = bootstrap_band(samples, n_resamples=500)
    assert count.tolist() == [2, 3, 0]
    assert mean[0] == pytest.approx(0.5) and 0.0 <= low[0] <= 0.5 <= high[0] <= 1.0
    assert low[1] == high[1] == 1.0 and np.isnan(mean[2]) and np.isnan(low[2])


def test_bootstrap_is_deterministic_for_a_seed():
    values = [0.1, 0.5, 0.3, 0.9]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)


def test_wilson_interval_known_values():
    # 0 wins of 32: [0, 0.107]; 16 of 32: symmetric around 0.5 (0.336, 0.664)
    assert wilson_interval(0, 32) == (0.0, pytest.approx(0.1072, abs=1e-3))
    low, high = wilson_interval(16, 32)
    assert low == pytest.approx(0.3364, abs=1e-3) and high == pytest.approx(0.6636, abs=1e-3)
    assert wilson_interval(32, 32)[1] == 1.0


def test_area_under_curve_is_the_average_over_training():
    assert area_under_curve([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert area_under_curve([0, 10, 20], [0.5, np.nan, 0.5]) == pytest.approx(0.5)
    assert area_under_curve([5], [0.3]) == pytest.approx(0.3)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: bootstrap_ci([]), "at least one value"),
    (lambda: bootstrap_ci([1.0], confidence=1.5), "confidence must be in"),
    (lambda: bootstrap_band(np.zeros(3)), "samples must be"),
    (lambda: wilson_interval(3, 2), "successes"),
])
def test_bad_input_is_one_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
