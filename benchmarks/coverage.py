"""Coverage of iclft's 95% intervals (`iclft.metrics.stats.interval`, `crossed_interval`) at 3, 5 and 10 seeds.

    .venv/bin/python benchmarks/coverage.py [--reps 2000] [--seed 0] [--method both|new|old] [--stress]

For each regime the script draws `reps` independent studies, computes the interval each would report and counts how
often it holds the TRUE value: the population quantity over everything that varies between studies, i.e. over the
seeds' demonstration draws AND over which queries were measured, never the mean of the particular queries drawn.
It prints coverage with its Monte-Carlo standard error sqrt(c (1 - c) / reps) (about 0.005 at the default 2000 reps,
so a printed 0.93 is 0.93 +- 0.01) and the mean interval width, so that a fix that only widens intervals shows.
`old` is a frozen copy of the intervals before this benchmark (Student t for bounded means, Wilson with a clustered
effective sample size for proportions); `new` is the installed iclft. The same draws feed both.

Regimes (per-query values y[s, q] for seed s and query q; S seeds, Q = 150 queries per seed, as the dual study's
default; `metric` is the iclft metric whose interval rule is used):

(a) query_per_seed - simaou. y = mu + a_s + b_sq + e_sq, seed effect a_s ~ N(0, 0.03^2), query effect b ~ N(0, 0.23^2),
    residual e ~ N(0, 0.1^2), mu = 0.2; every seed draws its own Q queries, so b is new in each seed. The study reports
    the per-seed means. Truth: mu (the mean over the query population and the seed population).
(b) query_shared - simaou. The same, but one set of Q queries shared by all seeds (b_q drawn once per study), as when
    every seed sees the first N test queries. `naive`: `interval` of the per-seed means (what a study with shared
    queries reports if it ignores the sharing); `crossed`: `crossed_interval` of the S x Q matrix. Truth: mu. The
    variances are the audit's mix: the query part of the grand mean's variance, 0.23^2 / 150, is 0.4 times the seed
    variance 0.03^2.
(c) proportion_095 - acc. Per-seed success rate p_s ~ Beta(9.5, 0.5) (mean 0.95, sd 0.066: strong, skewed between-seed
    variation, a tenth of seeds below 0.86), k_s ~ Binomial(150, p_s); the study reports k_s / 150 with 150 trials
    per seed. Truth: E[p_s] = 0.95.
(d) skewed_cosine - s_icl_it. Per-seed mean cosine 1 - d_s with d_s ~ Exponential(mean 0.05) (Gamma shape 1:
    skewness -2, bunched under +1 with a long tail down). Truth: 1 - E[d_s] = 0.95.
(e) correlation - pearson_r. Per seed, Pearson r of 150 bivariate-normal pairs whose correlation rho_s has
    atanh(rho_s) ~ N(atanh(0.3), 0.15^2). iclft averages correlations on the Fisher-z scale, so its estimand is
    tanh(E[atanh r_s]); truth is that number, computed once by simulating 400 000 seeds (it differs from
    tanh(E[atanh rho_s]) = 0.3 by atanh(r)'s small-sample bias, about +0.001).
(f) diff_proportion - acc_diff. Per seed, accuracies on two query sets of 150 each (say clean and misleading):
    logit p1_s = logit(0.8) + u_s, logit p2_s = logit(0.55) + u_s + w_s, u_s ~ N(0, 0.5^2) shared by both sets,
    w_s ~ N(0, 0.4^2); the study reports k1_s / 150 - k2_s / 150. Truth: E[p1_s] - E[p2_s], by simulating 10^6 seeds.

`--stress` adds regimes harsher than the audit's, reported but not claimed: proportions from Beta(4.75, 0.25) (sd
0.097), logit-normal proportions (sd 1 on the logit scale, mean 0.95), cosines 1 - d with lognormal d (sigma 1) and
with Gamma(0.5) d (skewness -2.8).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
from scipy import optimize, special, stats

from iclft.metrics.stats import crossed_interval, interval, quantity

SEEDS = (3, 5, 10)
Q = 150
TARGET = 0.93


# ------------------------------------------------------------------------------------------------- the old intervals
def old_interval(values, metric: str, trials=None) -> tuple[float, float]:
    """The intervals before this benchmark (iclft 87a7fbe): Student t clipped to the range for bounded means,
    Wilson with the clustered effective sample size for proportions, Fisher z for correlations."""
    q = quantity(metric)
    x = np.asarray(values, float)
    n = x.size
    if q.method == "wilson":
        m = np.broadcast_to(np.asarray(1.0 if trials is None else trials, float), x.shape)
        k, total = x * m, float(m.sum())
        p = float(k.sum()) / total
        var = p * (1 - p) / total
        if n > 1:
            var = max(var, n / (n - 1) * float(np.sum((k - p * m) ** 2)) / total**2)
        ne = p * (1 - p) / var if var > 0 else total
        z = float(stats.t.ppf(0.975, n - 1)) if n > 1 else 1.959963984540054
        centre = (p + z * z / (2 * ne)) / (1 + z * z / ne)
        half = z / (1 + z * z / ne) * math.sqrt(p * (1 - p) / ne + z * z / (4 * ne**2))
        return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
    if q.method == "fisher_z":
        x = np.arctanh(np.clip(x, -1 + 1e-9, 1 - 1e-9))
    h = float(stats.t.ppf(0.975, n - 1)) * float(np.std(x, ddof=1)) / math.sqrt(n)
    lo, hi = float(np.mean(x)) - h, float(np.mean(x)) + h
    if q.method == "fisher_z":
        return math.tanh(lo), math.tanh(hi)
    return max(lo, q.low), min(hi, q.high)


def new_interval(values, metric: str, trials=None) -> tuple[float, float]:
    r = interval(values, metric, trials=trials)
    return r["ci_low"], r["ci_high"]


def new_crossed(matrix, metric: str) -> tuple[float, float]:
    r = crossed_interval(matrix, metric)
    return r["ci_low"], r["ci_high"]


# ------------------------------------------------------------------------------------------------------ the regimes
# Each regime: (name, metric, truth() -> float, draw(rng, S, reps) -> list of per-study inputs, methods), where a
# method is (label, function(study) -> (low, high)).

MU, SD_SEED, SD_QUERY, SD_RESID = 0.2, 0.03, 0.23, 0.1


def draw_query_per_seed(rng, s, reps):
    a = rng.normal(0, SD_SEED, (reps, s, 1))
    y = MU + a + rng.normal(0, SD_QUERY, (reps, s, Q)) + rng.normal(0, SD_RESID, (reps, s, Q))
    return list(y.mean(axis=2))


def draw_query_shared(rng, s, reps):
    a = rng.normal(0, SD_SEED, (reps, s, 1))
    b = rng.normal(0, SD_QUERY, (reps, 1, Q))
    return list(MU + a + b + rng.normal(0, SD_RESID, (reps, s, Q)))


def draw_beta_proportion(alpha, beta):
    def draw(rng, s, reps):
        return list(rng.binomial(150, rng.beta(alpha, beta, (reps, s))) / 150)
    return draw


def draw_logitnormal_proportion(rng, s, reps, sigma=1.0, mean=0.95):
    z = np.random.default_rng(7).standard_normal(400_000)
    c = optimize.brentq(lambda c: special.expit(c + sigma * z).mean() - mean, -10, 10)
    return list(rng.binomial(150, special.expit(c + sigma * rng.standard_normal((reps, s)))) / 150)


def draw_exp_cosine(rng, s, reps):
    return list(1 - rng.exponential(0.05, (reps, s)))


def draw_lognormal_cosine(rng, s, reps):
    return list(1 - 0.03 * rng.lognormal(0, 1, (reps, s)))


def draw_gamma_half_cosine(rng, s, reps):
    return list(1 - rng.gamma(0.5, 0.1, (reps, s)))


N_PAIRS, RHO, SD_Z = 150, 0.3, 0.15


def _pearson(rng, shape):
    """Pearson r of N_PAIRS bivariate-normal pairs per cell, correlation rho drawn per cell (atanh-normal)."""
    rho = np.tanh(np.arctanh(RHO) + SD_Z * rng.standard_normal(shape))[..., None]
    x = rng.standard_normal((*shape, N_PAIRS))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((*shape, N_PAIRS))
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def truth_correlation():
    rng = np.random.default_rng(12345)
    z = np.concatenate([np.arctanh(_pearson(rng, (20_000,))) for _ in range(20)])
    return float(np.tanh(z.mean()))


def draw_correlation(rng, s, reps):
    return list(_pearson(rng, (reps, s)))


A1, A2, SD_U, SD_W = special.logit(0.8), special.logit(0.55), 0.5, 0.4


def truth_diff():
    rng = np.random.default_rng(12345)
    u, w = SD_U * rng.standard_normal(1_000_000), SD_W * rng.standard_normal(1_000_000)
    return float(special.expit(A1 + u).mean() - special.expit(A2 + u + w).mean())


def draw_diff(rng, s, reps):
    u, w = SD_U * rng.standard_normal((reps, s)), SD_W * rng.standard_normal((reps, s))
    k1 = rng.binomial(150, special.expit(A1 + u))
    k2 = rng.binomial(150, special.expit(A2 + u + w))
    return list(k1 / 150 - k2 / 150)


def per_seed(metric, trials=None):
    """The study reports one value per seed: old and new intervals of those values."""
    return [("old", lambda v: old_interval(v, metric, trials)), ("new", lambda v: new_interval(v, metric, trials))]


def shared_methods(metric):
    return [("naive old", lambda m: old_interval(m.mean(axis=1), metric)),
            ("naive new", lambda m: new_interval(m.mean(axis=1), metric)),
            ("crossed", lambda m: new_crossed(m, metric))]


REGIMES = [
    ("(a) query_per_seed", "simaou", lambda: MU, draw_query_per_seed, per_seed("simaou")),
    ("(b) query_shared", "simaou", lambda: MU, draw_query_shared, shared_methods("simaou")),
    ("(c) proportion_095", "acc", lambda: 0.95, draw_beta_proportion(9.5, 0.5), per_seed("acc", 150)),
    ("(d) skewed_cosine", "s_icl_it", lambda: 0.95, draw_exp_cosine, per_seed("s_icl_it")),
    ("(e) correlation", "pearson_r", truth_correlation, draw_correlation, per_seed("pearson_r")),
    ("(f) diff_proportion", "acc_diff", truth_diff, draw_diff, per_seed("acc_diff")),
]
STRESS = [
    ("stress beta(4.75,.25)", "acc", lambda: 0.95, draw_beta_proportion(4.75, 0.25), per_seed("acc", 150)),
    ("stress logit-normal", "acc", lambda: 0.95, draw_logitnormal_proportion, per_seed("acc", 150)),
    ("stress lognormal cos", "s_icl_it", lambda: 1 - 0.03 * math.exp(0.5), draw_lognormal_cosine,
     per_seed("s_icl_it")),
    ("stress gamma(.5) cos", "s_icl_it", lambda: 0.95, draw_gamma_half_cosine, per_seed("s_icl_it")),
]


# ------------------------------------------------------------------------------------------------------ the table
def run(regimes, reps: int, seed: int, which: str) -> list[dict]:
    rows = []
    for i, (name, metric, truth_fn, draw, methods) in enumerate(regimes):
        truth = truth_fn()
        methods = [(label, f) for label, f in methods if which == "both" or label.split()[-1] in (which, "crossed")]
        cells = {label: {} for label, _ in methods}
        for s in SEEDS:
            rng = np.random.default_rng([seed, i, s])
            studies = draw(rng, s, reps)
            for label, f in methods:
                lo, hi = np.array([f(study) for study in studies]).T
                cov = float(np.mean((lo <= truth) & (truth <= hi)))
                cells[label][s] = (cov, math.sqrt(cov * (1 - cov) / reps), float(np.mean(hi - lo)))
        for label, _ in methods:
            rows.append({"regime": name, "metric": metric, "truth": truth, "method": label, "cells": cells[label]})
    return rows


def table(rows: list[dict]) -> str:
    head = "| regime | metric (truth) | interval | " + " | ".join(f"{s} seeds: coverage ± MC se (width)" for s in SEEDS)
    lines = [head + " |", "|---|---|---|" + "---:|" * len(SEEDS)]
    for r in rows:
        cells = " | ".join(f"{c:.3f} ± {se:.3f} ({w:.3f})" for c, se, w in (r["cells"][s] for s in SEEDS))
        lines.append(f"| {r['regime']} | {r['metric']} ({r['truth']:.4f}) | {r['method']} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000, help="studies per regime and seed count (MC se ~0.005)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=("both", "new", "old"), default="both")
    ap.add_argument("--stress", action="store_true", help="add the harsher regimes (reported, not claimed)")
    args = ap.parse_args(argv)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = run(REGIMES, args.reps, args.seed, args.method)
        stress = run(STRESS, args.reps, args.seed + 1, args.method) if args.stress else []
    print(f"Coverage of nominal 95% intervals, {args.reps} studies per cell, seed {args.seed} "
          f"({time.time() - t0:.0f} s)\n")
    print(table(rows))
    if stress:
        print("\nStress regimes (harsher than the audit's; reported, not claimed):\n")
        print(table(stress))
    shipped = [r for r in rows if r["method"] in ("new", "crossed")]
    if shipped:
        worst = min((r["cells"][s][0], r["regime"], s) for r in shipped for s in SEEDS)
        ok = worst[0] >= TARGET
        print(f"\nshipped intervals (new; crossed for shared queries): lowest coverage {worst[0]:.3f} "
              f"({worst[1]}, {worst[2]} seeds) -> {'all' if ok else 'NOT all'} >= {TARGET}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
