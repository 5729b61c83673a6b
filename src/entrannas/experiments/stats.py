"""What the consistency tables can support: Kendall tau (paper Table 2, [26]) with a p-value
and a bootstrap interval, the smallest tau a sample size can call significant, and the spread
of a set of accuracies (for the retraining noise).

    s = kendall_summary(supernet_accs, retrained_accs)     # tau, p_value, ci_low, ci_high, ...

The bootstrap resamples the (super-net, retrained) pairs with replacement, seeded, and takes
the 2.5% and 97.5% quantiles of tau-b over the resamples (percentile interval). A resample
whose super-net or retrained values are all equal (e.g. one pair drawn n times) has no
defined tau (0/0): it is left out and counted in `degenerate`, and the interval is taken over
the others. With 6-8 pairs the interval is wide by nature: that is the point of reporting it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau

__all__ = ["kendall_tau_b", "kendall_summary", "kendall_critical_tau", "spread"]

EXACT_MAX_N = 33  # scipy's exact null distribution is used up to this many pairs (no ties)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of x, y [R, n] (ties handled as scipy does); NaN
    where a row of x or of y is constant."""
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    n = x.shape[1]
    iu = np.triu_indices(n, 1)
    sx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]  # [R, n(n-1)/2]
    sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    num = (sx * sy).sum(1)
    den = np.sqrt((sx != 0).sum(1) * (sy != 0).sum(1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def kendall_summary(x: Sequence[float], y: Sequence[float], resamples: int = 10_000,
                    seed: int = 0, level: float = 0.95) -> dict:
    """Kendall tau-b of the pairs (x_i, y_i), its p-value (scipy's exact test without ties
    and up to 33 pairs, else the asymptotic one) and a seeded bootstrap percentile interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equally long lists of values, got {x.shape} and {y.shape}")
    n = len(x)
    out = {"n": n, "resamples": int(resamples), "seed": int(seed), "level": level,
           "tau": math.nan, "p_value": math.nan, "p_method": "n/a", "ci_low": math.nan,
           "ci_high": math.nan, "degenerate": 0}
    if n < 2:
        return out
    ties = len(np.unique(x)) < n or len(np.unique(y)) < n
    method = "exact" if not ties and n <= EXACT_MAX_N else "asymptotic"
    res = kendalltau(x, y, method=method)
    out.update(tau=float(res.statistic), p_value=float(res.pvalue), p_method=method)
    rng = np.random.default_rng(seed)
    taus = []
    for start in range(0, resamples, 2000):  # chunks keep the [R, n, n] sign arrays small
        idx = rng.integers(0, n, size=(min(2000, resamples - start), n))
        taus.append(kendall_tau_b(x[idx], y[idx]))
    taus = np.concatenate(taus) if taus else np.empty(0)
    valid = taus[~np.isnan(taus)]
    out["degenerate"] = int(len(taus) - len(valid))
    if len(valid):
        lo, hi = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def _inversion_counts(n: int) -> list[int]:
    """How many permutations of n items have k inversions, k = 0..n(n-1)/2 (Mahonian numbers):
    the exact null distribution of Kendall's statistic."""
    counts = [1]
    for m in range(2, n + 1):  # inserting item m adds 0..m-1 inversions
        new = [0] * (len(counts) + m - 1)
        for k, c in enumerate(counts):
            for add in range(m):
                new[k + add] += c
        counts = new
    return counts


def kendall_critical_tau(n: int, alpha: float = 0.05) -> float:
    """The smallest |tau| that n pairs without ties can show with a two-sided exact p < alpha
    (NaN when even a perfect ranking cannot: n <= 3 at alpha 0.05)."""
    if n < 2:
        return math.nan
    counts = _inversion_counts(n)
    total, pairs = sum(counts), n * (n - 1) // 2
    best, cum = math.nan, 0
    for c in range(pairs // 2 + 1):  # c: discordant pairs of the weaker direction
        cum += counts[c]
        if min(1.0, 2 * cum / total) >= alpha:
            break
        best = 1 - 4 * c / (n * (n - 1))
    return best


def spread(values: Sequence[float]) -> dict:
    """n, mean, sample standard deviation (ddof 1), min, max and range of some accuracies."""
    v = np.asarray(list(values), float)
    if not len(v):
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan,
                "range": math.nan}
    return {"n": int(len(v)), "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "min": float(v.min()), "max": float(v.max()), "range": float(v.max() - v.min())}
