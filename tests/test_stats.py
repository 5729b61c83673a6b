"""The statistics of the consistency tables, on data whose answers are known."""
import math
from itertools import permutations

import numpy as np
import pytest
from scipy.stats import kendalltau

from entrannas.experiments.stats import (_inversion_counts, kendall_critical_tau, kendall_summary,
                                         kendall_tau_b, spread)


def _with_inversions(n, c):
    """A permutation of range(n) with exactly c inversions (from its Lehmer code)."""
    code, left = [], c
    for i in range(n):
        d = min(left, n - 1 - i)
        code.append(d)
        left -= d
    items, out = list(range(n)), []
    for d in code:
        out.append(items.pop(d))
    return out


def test_one_swap_in_eight_has_the_exact_tau_and_p_value():
    x, y = list(range(8)), [0, 1, 2, 3, 4, 5, 7, 6]
    s = kendall_summary(x, y)
    assert s["tau"] == pytest.approx(26 / 28) and s["p_method"] == "exact"
    # At most one discordant pair: 1 + 7 of the 8! orderings, either direction: 16 / 8!.
    assert s["p_value"] == pytest.approx(16 / math.factorial(8))


def test_the_bootstrap_resamples_pairs_and_is_seeded():
    x = [70.1, 71.3, 72.0, 73.5, 74.2, 75.0, 76.4, 77.7]
    s = kendall_summary(x, [v + 10 for v in x])
    # Pairs are resampled together: a perfect ranking stays perfect in every resample.
    assert s["tau"] == pytest.approx(1.0) and s["ci_low"] == s["ci_high"] == 1.0
    rev = kendall_summary(x, [-v for v in x])
    assert rev["tau"] == pytest.approx(-1.0) and rev["ci_low"] == rev["ci_high"] == -1.0
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=8), rng.normal(size=8)
    one, again, other = kendall_summary(a, b), kendall_summary(a, b), kendall_summary(a, b, seed=1)
    assert one == again and (one["ci_low"], one["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert one["ci_low"] <= one["tau"] <= one["ci_high"] and one["resamples"] == 10_000
    assert -1 <= one["ci_low"] < one["ci_high"] <= 1  # 8 noisy pairs: a wide interval
    assert one["p_value"] == pytest.approx(kendalltau(a, b).pvalue)


def test_vectorised_tau_b_equals_scipy_on_resamples_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=8), rng.normal(size=8)
    idx = rng.integers(0, 8, size=(50, 8))
    ours = kendall_tau_b(x[idx], y[idx])
    for row, t in zip(idx, ours):
        ref = kendalltau(x[row], y[row]).statistic
        assert (math.isnan(ref) and math.isnan(t)) or t == pytest.approx(ref)


def test_degenerate_resamples_are_left_out_and_counted():
    s = kendall_summary([1.0, 2.0], [3.0, 4.0], resamples=1000)
    # Two pairs: half the resamples draw one pair twice, which has no tau.
    assert 400 < s["degenerate"] < 600 and s["ci_low"] == s["ci_high"] == 1.0
    flat = kendall_summary([5.0] * 6, [1, 2, 3, 4, 5, 6], resamples=100)
    assert math.isnan(flat["tau"]) and flat["degenerate"] == 100 and math.isnan(flat["ci_low"])
    tied = kendall_summary([1, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6])
    assert tied["p_method"] == "asymptotic"  # scipy's exact test does not take ties


@pytest.mark.parametrize("n", [5, 6, 8, 10])
def test_critical_tau_is_the_exact_tests_threshold(n):
    counts = _inversion_counts(n)
    assert sum(counts) == math.factorial(n) and len(counts) == n * (n - 1) // 2 + 1
    if n <= 6:  # the Mahonian numbers, checked by brute force
        brute = [0] * len(counts)
        for p in permutations(range(n)):
            brute[sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n))] += 1
        assert brute == counts
    crit = kendall_critical_tau(n)
    c = round((1 - crit) * n * (n - 1) / 4)  # discordant pairs at the threshold
    x = list(range(n))
    assert kendalltau(x, _with_inversions(n, c), method="exact").pvalue < 0.05
    assert kendalltau(x, _with_inversions(n, c + 1), method="exact").pvalue >= 0.05
    # 4 pairs: even a perfect ranking has p = 2/4! = 0.083.
    assert math.isnan(kendall_critical_tau(4)) and math.isnan(kendall_critical_tau(3))


def test_spread_is_sample_std_and_range():
    s = spread([80.0, 82.0, 84.0])
    assert (s["n"], s["mean"], s["std"], s["range"]) == (3, 82.0, 2.0, 4.0)
    assert math.isnan(spread([80.0])["std"]) and spread([])["n"] == 0
