"""`cmseg.stats`: the study's paired statistics against values computed by
hand from their definitions."""

import math

import numpy as np
import pytest

from cmseg import stats


def test_mean_std_is_numpys_population_std_without_nans():
    mean, std = stats.mean_std([1.0, 2.0, math.nan, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(1.25))
    assert all(math.isnan(v) for v in stats.mean_std([math.nan]))


def test_paired_differences_keep_common_finite_keys_in_order():
    a = {(2, 0): 0.5, (1, 0): 0.7, (3, 0): 0.1, (4, 0): math.nan}
    b = {(1, 0): 0.6, (2, 0): 0.9, (4, 0): 0.2, (5, 0): 0.3}
    keys, d = stats.paired_differences(a, b)
    assert keys == [(1, 0), (2, 0)]
    np.testing.assert_allclose(d, [0.1, -0.4])


def test_wilcoxon_against_the_exact_null_distribution_by_hand():
    # |d| ranks 1..5; the negative rank sum is 2. Of the 2^5 sign patterns,
    # 3 have a rank sum <= 2 ({}, {1}, {2}): two-sided p = 2 * 3 / 32.
    statistic, p = stats.wilcoxon_signed_rank([1.0, -2.0, 3.0, 4.0, 5.0])
    assert statistic == 2.0 and p == pytest.approx(6 / 32)
    # All positive: W = 0, p = 2 / 2^3.
    statistic, p = stats.wilcoxon_signed_rank([0.5, 1.5, 2.5])
    assert statistic == 0.0 and p == pytest.approx(0.25)


def test_wilcoxon_without_a_nonzero_difference_is_not_a_test():
    assert all(math.isnan(v) for v in stats.wilcoxon_signed_rank([0.0, 0.0]))
    assert all(math.isnan(v) for v in stats.wilcoxon_signed_rank([]))


def test_bootstrap_interval_against_the_resampling_distribution_by_hand():
    # Means of 2 draws from {0, 1}: 0, 1/2, 1 with probabilities 1/4, 1/2,
    # 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1.
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # Means of 4 draws from {0, 0, 0, 1} are k/4, k ~ Binomial(4, 1/4):
    # P(k = 0) = 0.316 > 0.025 and P(k <= 2) = 0.949 < 0.975 <= P(k <= 3).
    assert stats.bootstrap_ci([0.0, 0.0, 0.0, 1.0]) == (0.0, 0.75)
    assert stats.bootstrap_ci([0.25] * 5) == (0.25, 0.25)
    # Reproducible from its seed, and a different seed resamples afresh.
    d = np.random.default_rng(1).normal(size=12)
    assert stats.bootstrap_ci(d, seed=3) == stats.bootstrap_ci(d, seed=3)
    assert stats.bootstrap_ci(d, seed=3) != stats.bootstrap_ci(d, seed=4)


def test_compare_counts_pairs_wins_and_losses():
    a = {k: v for k, v in enumerate([0.6, 0.5, 0.9, 0.7])}
    b = {k: v for k, v in enumerate([0.5, 0.7, 0.4, 0.2, 0.1])}
    c = stats.compare(a, b)
    assert (c["n"], c["wins"], c["losses"]) == (4, 3, 1)
    assert c["mean"] == pytest.approx((0.1 - 0.2 + 0.5 + 0.5) / 4)
    assert c["ci_low"] <= c["mean"] <= c["ci_high"]
    # ranks of |d| = 0.1, 0.2, 0.5, 0.5: 1, 2, 3.5, 3.5; negative sum 2.
    assert c["wilcoxon"] == 2.0
