"""Paired statistics of `cmseg study`: differences between two losses over
the same (fold, seed) pairs, the Wilcoxon signed-rank test and a bootstrap
interval of the mean difference.

The unit is one run: a run's score is the mean of its cases (Experiment 1:
the held-out bone against each of its surgeons; Experiment 2: every bone
against the training surgeons). Two losses are paired when they share the
experiment, fold, model and seed, so the pairs differ only in the loss.
"""

import math

import numpy as np

__all__ = ["mean_std", "paired_differences", "wilcoxon_signed_rank", "bootstrap_ci",
           "compare"]


def mean_std(values):
    """Mean and standard deviation (numpy's, `ddof=0`, as `cmseg evaluate`)
    of the finite and infinite values given; `(nan, nan)` for none."""
    values = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if not values.size:
        return math.nan, math.nan
    return float(values.mean()), float(values.std())


def paired_differences(a, b):
    """`a[k] - b[k]` for the keys both dicts hold (NaN values dropped).

    Returns:
        (keys, differences): the sorted common keys and a float64 array.
    """
    keys = sorted(k for k in set(a) & set(b)
                  if not (math.isnan(a[k]) or math.isnan(b[k])))
    return keys, np.asarray([a[k] - b[k] for k in keys], np.float64)


def wilcoxon_signed_rank(differences):
    """Two-sided Wilcoxon signed-rank test of `differences` against zero
    (`scipy.stats.wilcoxon`: the statistic is the smaller of the positive
    and negative rank sums; zero differences are dropped, the exact null
    distribution is used for small samples without ties).

    Returns:
        (statistic, p_value); `(nan, nan)` when fewer than one non-zero
        difference remains (no test possible).
    """
    from scipy import stats

    d = np.asarray(differences, np.float64)
    d = d[np.isfinite(d)]
    if not np.count_nonzero(d):
        return math.nan, math.nan
    result = stats.wilcoxon(d, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def bootstrap_ci(differences, level=0.95, n_resamples=10000, seed=0):
    """Percentile bootstrap interval of the mean of `differences`.

    Resamples the pairs with replacement `n_resamples` times (a seeded
    generator, so the interval is reproducible) and returns the
    `(1 - level) / 2` and `(1 + level) / 2` quantiles of the resampled means
    (numpy's default linear interpolation). `(nan, nan)` for no pairs.
    """
    d = np.asarray(differences, np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def compare(a, b, level=0.95, n_resamples=10000, seed=0):
    """Everything the study reports of `a - b` (dicts pair key -> score).

    Returns:
        dict with `n` (pairs), `mean`, `ci_low`, `ci_high`, `wilcoxon`
        (statistic), `p`, `wins` (pairs with a > b) and `losses` (a < b).
    """
    _, d = paired_differences(a, b)
    d = d[np.isfinite(d)]
    low, high = bootstrap_ci(d, level, n_resamples, seed)
    statistic, p = wilcoxon_signed_rank(d)
    return {"n": int(d.size), "mean": float(d.mean()) if d.size else math.nan,
            "ci_low": low, "ci_high": high, "wilcoxon": statistic, "p": p,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}
