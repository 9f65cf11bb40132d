"""Aggregation across seeds and hypothesis tests (METRICS.md, "Aggregation")."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats

from iclft.metrics.similarity import to_float64

NAN = float("nan")


def t_interval(values: Any, confidence: float = 0.95) -> dict[str, float | int]:
    """Mean with a Student-t confidence interval, ignoring NaNs.

    `values` is a 1-D sequence (one number per seed). Returns `mean`, `ci_low`, `ci_high`, `n` (the
    number of non-NaN values) and `sd` (sample standard deviation, ddof=1). The interval is
    `mean ± t_{(1+confidence)/2, n−1} · sd / √n`; with n < 2 the sd and interval are NaN (and with
    n = 0 the mean too).
    """
    x = to_float64(values).ravel()
    x = x[~np.isnan(x)]
    n = int(x.size)
    mean = float(np.mean(x)) if n else NAN
    if n < 2:
        return {"mean": mean, "ci_low": NAN, "ci_high": NAN, "n": n, "sd": NAN}
    sd = float(np.std(x, ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1)) * sd / np.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n, "sd": sd}


def per_layer_interval(matrix: Any, confidence: float = 0.95) -> dict[str, list]:
    """`t_interval` for each column of an (n_seeds, n_layers) matrix.

    Returns lists of length n_layers: `mean`, `ci_low`, `ci_high`, `sd` (floats) and `n` (ints; the
    non-NaN seeds per layer, which differ between layers only if some entries are NaN).
    """
    m = to_float64(matrix)
    if m.ndim != 2:
        raise ValueError(f"expected shape (n_seeds, n_layers), got {m.shape}")
    cols = [t_interval(m[:, j], confidence) for j in range(m.shape[1])]
    return {key: [c[key] for c in cols] for key in ("mean", "ci_low", "ci_high", "sd", "n")}


def _paired_finite(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = to_float64(x).ravel()
    y = to_float64(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired inputs must have the same length, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def correlation(x: Any, y: Any) -> dict[str, float | int]:
    """Pearson and Spearman correlation with two-sided p-values (scipy), over pairs without NaN.

    `x`, `y`: 1-D sequences of equal length. Returns `pearson_r`, `pearson_p`, `spearman_rho`,
    `spearman_p`, `n` (pairs used). All four statistics are NaN, silently, when n < 3 (two points
    always correlate perfectly, which says nothing) or when either input is constant.
    """
    x, y = _paired_finite(x, y)
    n = int(x.size)
    out: dict[str, float | int] = {
        "pearson_r": NAN, "pearson_p": NAN, "spearman_rho": NAN, "spearman_p": NAN, "n": n,
    }
    if n < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return out
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    out.update(pearson_r=float(pr.statistic), pearson_p=float(pr.pvalue),
               spearman_rho=float(sr.statistic), spearman_p=float(sr.pvalue))
    return out


def paired_test(a: Any, b: Any) -> dict[str, float | int]:
    """Paired t-test and Wilcoxon signed-rank test of a − b (two-sided), over pairs without NaN.

    `a`, `b`: 1-D sequences of equal length (e.g. one value per seed). Returns `mean_diff` (mean of
    a − b), `t`, `t_p`, `wilcoxon_stat`, `wilcoxon_p`, `n` (pairs used).

    Edge cases, chosen so that "no difference at all" never looks significant:
    - n < 2: everything but `mean_diff` and `n` is NaN.
    - all differences exactly zero: t = NaN (0/0), t_p = 1.0, wilcoxon_stat = 0.0, wilcoxon_p = 1.0.
    - constant non-zero differences: scipy's convention, t = ±inf and t_p = 0.0.
    Wilcoxon uses scipy's default `zero_method="wilcox"` (zero differences are dropped) and its
    automatic choice between the exact and normal-approximation p-value.
    """
    a, b = _paired_finite(a, b)
    d = a - b
    n = int(d.size)
    out: dict[str, float | int] = {
        "mean_diff": float(np.mean(d)) if n else NAN,
        "t": NAN, "t_p": NAN, "wilcoxon_stat": NAN, "wilcoxon_p": NAN, "n": n,
    }
    if n < 2:
        return out
    if np.all(d == 0):
        out.update(t_p=1.0, wilcoxon_stat=0.0, wilcoxon_p=1.0)
        return out
    with warnings.catch_warnings():
        # Near-constant differences trigger scipy precision warnings; the result is still reported.
        warnings.simplefilter("ignore", RuntimeWarning)
        tt = stats.ttest_1samp(d, 0.0)
        wx = stats.wilcoxon(d)
    out.update(t=float(tt.statistic), t_p=float(tt.pvalue),
               wilcoxon_stat=float(wx.statistic), wilcoxon_p=float(wx.pvalue))
    return out
