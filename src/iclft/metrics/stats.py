"""Aggregation across seeds and hypothesis tests (METRICS.md, "Aggregation")."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import MappingProxyType
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


# ------------------------------------------------------------------------------------------------------------
# Intervals that respect the quantity. `QUANTITIES` (the shared rows below and each study's own, `declare_quantities`)
# is the one place that decides which interval a metric gets;
# METRICS.md's aggregation (one number per seed, then across seeds) stays the formula for the point estimate.

@dataclass(frozen=True)
class Quantity:
    """What a metric is, for its interval: its range and the interval method.

    Every interval is a 95% interval of the population mean: over the seeds' random draws (demonstrations, training
    order) and, when each seed draws its own queries, over the queries too. When seeds share one query set, an
    interval from per-seed values misses the query-to-query variance; give the seeds x queries matrix to
    `crossed_interval`. Coverage of every method at 3, 5 and 10 seeds: `benchmarks/coverage.py`.

    method:
    - "score": the mean of a bounded quantity (cosines, rank correlations, differences of proportions, ...). The
      seed-to-seed variance shrinks as the mean nears a bound of the range [lo, hi], so it is modelled as
      v(mu) = v * (V(mu) / V(mean))**SEED_POWER with V(mu) = (mu - lo)(hi - mu) and v = sd**2 / n measured at the mean;
      the interval is every mu with (mean - mu)**2 <= t**2 * v(mu), t the Student quantile with n - 1 degrees of
      freedom, fewer for heavy-tailed seeds (`_seed_df`: only from about 8 seeds on). Far from the bounds this is
      the t-interval; near one it reaches further from the bound than towards it, as the skewed spread of seeds
      near a bound requires (a plain t-interval covered 0.88 there), and it always stays inside the range, short of
      a bound unless every seed sits on it. SEED_POWER = 1.5 lies between a beta/binomial spread (1) and a
      logit-normal or constant-CV one (2); the simulation chose it (1 under-covers skewed seeds at 5-10 seeds).
    - "wilson": a proportion of trials (accuracy, Rec2FTP, changed predictions). The pooled proportion with the hull
      of two score intervals at the t quantile of the seeds (as for "score"; the normal quantile for one seed):
      Wilson's interval over all trials (the binomial variance, so seeds that agree never give a zero-width
      interval; one seed gives plain Wilson), and the "score" interval of the between-seed variance of the ratio
      estimator (trials within a seed share demonstrations). Inside [0, 1] at every n.
    - "fisher_z": a correlation computed per seed. Per-seed r -> z = atanh(r), t-interval across seeds on the z
      scale, back through tanh; the point estimate is tanh(mean z) (the usual way to average correlations).
    - "t": mean with a Student-t interval across seeds, intersected with the range (unbounded or half-bounded
      quantities: update sizes, speed-ups, losses). Intersecting a confidence set with the known parameter space
      keeps its coverage, unlike a percentile bootstrap at 2-5 seeds (~50-85%).
    - "crossed" (`crossed_interval` only): seeds x queries crossed random effects, for studies whose seeds share
      their queries.
    """

    low: float
    high: float
    method: str
    about: str


PROPORTION = Quantity(0.0, 1.0, "wilson", "proportion of trials")
COSINE = Quantity(-1.0, 1.0, "score", "cosine similarity")
CORRELATION = Quantity(-1.0, 1.0, "fisher_z", "correlation per seed")
MEAN_TAU = Quantity(-1.0, 1.0, "score", "rank correlation averaged over queries")
UNIT = Quantity(0.0, 1.0, "score", "quantity in [0, 1]")
DISTANCE = Quantity(0.0, 2.0, "score", "cosine distance 1 - cos")
DIFF_PROPORTION = Quantity(-1.0, 1.0, "score", "difference of two proportions")
POSITIVE = Quantity(0.0, math.inf, "t", "positive quantity")
REAL = Quantity(-math.inf, math.inf, "t", "unbounded quantity")

# Rows several studies share: the update size ‖h_x − h_ZSL‖ / ‖h_ZSL‖ and the share of predictions a setting changed
# (x = icl, it, sl, ft), and accuracies. Every other row is declared by its study (`declare_quantities`, next to the
# code that computes the metric), so a new study brings its own rows and adds none here.
_QUANTITIES: dict[str, Quantity] = {
    **{f"u_{x}": POSITIVE for x in ("icl", "it", "sl", "ft")},
    **{f"changed_{x}": PROPORTION for x in ("icl", "it", "sl", "ft")},
    "accuracy": PROPORTION,
}


def declare_quantities(rows: dict[str, Quantity]) -> dict[str, Quantity]:
    """Add a study's metrics to the table (at its import) and return them; a name already declared as another
    quantity is an error, so two studies cannot give one metric two interval rules."""
    for name, q in rows.items():
        if _QUANTITIES.setdefault(name, q) != q:
            raise ValueError(f"metric {name!r} is already declared as {_QUANTITIES[name]}, not {q}")
    return rows


def _every_study_declared() -> None:
    """Import every study (the registry), so each has declared its quantities: only the full table needs this,
    and a lookup of a metric whose study is not imported yet (a report rendered on its own)."""
    import iclft.registry  # noqa: F401


def __getattr__(name: str):
    if name == "QUANTITIES":  # the full table: the shared rows and every study's
        _every_study_declared()
        return MappingProxyType(_QUANTITIES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def quantity(metric: str) -> Quantity:
    """The quantity of a metric name; accuracies (`acc`, `acc_*`) are proportions."""
    if metric not in _QUANTITIES:
        _every_study_declared()
    if metric in _QUANTITIES:
        return _QUANTITIES[metric]
    if metric == "acc" or metric.startswith("acc_"):
        return PROPORTION
    raise KeyError(f"no interval rule for metric {metric!r}; declare it in its study with "
                   "iclft.metrics.stats.declare_quantities")


def interval(values: Any, metric: str, trials: Any = None, confidence: float = 0.95) -> dict:
    """Point estimate and 95% interval of a metric from one value per seed, by the metric's `Quantity`.

    `trials` (proportions only): trials behind each seed's proportion (a number or one per seed). Returns
    `mean`, `ci_low`, `ci_high`, `n` (seeds), `sd`, `method`, `range` ([low, high], None if unbounded) and
    `per_seed` (the values, NaN kept). The interval covers the population mean over what varies between the seeds
    (see `Quantity`); for seeds that share their queries use `crossed_interval`.
    """
    q = quantity(metric)
    raw = to_float64(values).ravel()
    keep = ~np.isnan(raw)
    x = raw[keep]
    n = int(x.size)
    out = {"mean": NAN, "ci_low": NAN, "ci_high": NAN, "n": n, "sd": NAN, "method": q.method,
           "range": [v if math.isfinite(v) else None for v in (q.low, q.high)], "per_seed": [float(v) for v in raw]}
    if n == 0:
        return out
    out["sd"] = float(np.std(x, ddof=1)) if n > 1 else NAN
    if q.method == "wilson":
        m = np.broadcast_to(to_float64(1.0 if trials is None else trials), raw.shape)[keep]
        out.update(_wilson_clustered(x * m, m, confidence))
    elif q.method == "fisher_z":
        z = np.arctanh(np.clip(x, -1 + 1e-9, 1 - 1e-9))
        t = t_interval(z, confidence)
        out.update(mean=float(np.tanh(t["mean"])), ci_low=float(np.tanh(t["ci_low"])),
                   ci_high=float(np.tanh(t["ci_high"])))
    elif q.method == "score":
        mean = float(np.mean(x))
        out["mean"] = mean
        if n > 1:
            lo, hi = _bounded_score(mean, out["sd"] ** 2 / n, _t_quantile(confidence, _seed_df(x)), q.low, q.high)
            out.update(ci_low=lo, ci_high=hi)
    else:
        t = t_interval(x, confidence)
        out.update(mean=t["mean"], ci_low=_clip(t["ci_low"], q), ci_high=_clip(t["ci_high"], q))
    return out


def _clip(v: float, q: Quantity) -> float:
    return v if v != v else float(min(max(v, q.low), q.high))


# The seed-to-seed variance of a bounded mean scales as ((mu - lo)(hi - mu))**SEED_POWER (see `Quantity`, "score").
SEED_POWER = 1.5


def _t_quantile(confidence: float, df: float | None) -> float:
    """Two-sided Student quantile with `df` degrees of freedom (any df > 0); the normal one for df None or inf."""
    if df is None or not math.isfinite(df):
        return float(stats.norm.ppf((1 + confidence) / 2))
    return float(stats.t.ppf((1 + confidence) / 2, df))


def _seed_df(x: np.ndarray) -> float:
    """Degrees of freedom of the seeds' spread: n - 1, fewer when the seeds are heavy-tailed (sample excess kurtosis
    g2 = m4 / m2**2 - 3 > 0): 2 / (2 / (n - 1) + g2 / n), the chi-square matching the variance of the sample
    variance, var(s**2) = sigma**4 (2 / (n - 1) + kurtosis / n). g2 is -1.5 for every 3 values and at most 0.25 for 5,
    so this bites from about 8 seeds on, where skewed seeds still under-covered."""
    n = x.size
    d = x - x.mean()
    m2 = float(np.mean(d**2))
    g2 = float(np.mean(d**4)) / m2**2 - 3 if m2 > 0 else 0.0
    return 2.0 / (2.0 / (n - 1) + max(g2, 0.0) / n)


def _spread_bounds(p: float, v: float, quant: float) -> tuple[float, float]:
    """On the unit scale: the set of mu in [0, 1] with (p - mu)**2 <= quant**2 * v * (V(mu) / V(p))**SEED_POWER,
    V(mu) = mu (1 - mu); `v` is the variance of the mean measured at `p`.

    sqrt(V(mu)**SEED_POWER) is concave for SEED_POWER <= 2, so the set is an interval around p with one root of
    (p - mu)**2 = quant**2 * v * (V(mu) / V(p))**SEED_POWER on each side (found by Brent's method to ~1e-15)."""
    if not v > 0:
        return p, p
    vp = p * (1.0 - p)
    if not vp > 0:  # values at a bound yet spread out: only if they left the range by rounding; fall back to t
        h = quant * math.sqrt(v)
        return max(0.0, p - h), min(1.0, p + h)
    from scipy.optimize import brentq

    c = quant * quant * v / vp**SEED_POWER

    def f(mu: float) -> float:
        return (p - mu) ** 2 - c * (mu * (1.0 - mu)) ** SEED_POWER

    lo = brentq(f, 0.0, p, xtol=1e-15) if f(0.0) > 0 else 0.0
    hi = brentq(f, p, 1.0, xtol=1e-15) if f(1.0) > 0 else 1.0
    return float(lo), float(hi)


def _bounded_score(mean: float, var: float, quant: float, low: float, high: float) -> tuple[float, float]:
    """The "score" interval of a mean in [low, high] with variance `var` at the mean (see `Quantity`); an unbounded
    side falls back to the t-interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        h = quant * math.sqrt(var)
        return max(low, mean - h), min(high, mean + h)
    span = high - low
    p = min(1.0, max(0.0, (mean - low) / span))
    a, b = _spread_bounds(p, var / span**2, quant)
    return min(mean, low + span * a), max(mean, low + span * b)


def _wilson(p: float, n: float, quant: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion p from n trials at the quantile `quant`."""
    z2 = quant * quant
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = quant / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n**2))
    return centre - half, centre + half


def _wilson_clustered(successes: np.ndarray, trials: np.ndarray, confidence: float) -> dict:
    """Pooled proportion; hull of Wilson over all trials and the score interval of the between-seed variance."""
    n_seeds, total = successes.size, float(trials.sum())
    if total <= 0:
        return {}
    p = float(successes.sum()) / total
    quant = _t_quantile(confidence, _seed_df(successes / trials) if n_seeds > 1 else None)
    lo, hi = _wilson(p, total, quant)  # binomial: the floor, and all there is for one seed
    if n_seeds > 1:  # between-seed variance of the ratio estimator
        v = n_seeds / (n_seeds - 1) * float(np.sum((successes - p * trials) ** 2)) / total**2
        a, b = _spread_bounds(p, v, quant)
        lo, hi = min(lo, a), max(hi, b)
    # both intervals hold p; min/max only absorb rounding at p = 0 or 1
    return {"mean": p, "ci_low": max(0.0, min(p, lo)), "ci_high": min(1.0, max(p, hi))}


def layer_intervals(matrix: Any, metric: str, confidence: float = 0.95) -> dict[str, list]:
    """`interval` for each column of an (n_seeds, n_layers) matrix: lists `mean`, `ci_low`, `ci_high`, `sd`, `n`."""
    m = to_float64(matrix)
    if m.ndim != 2:
        raise ValueError(f"expected shape (n_seeds, n_layers), got {m.shape}")
    cols = [interval(m[:, j], metric, confidence=confidence) for j in range(m.shape[1])]
    return {key: [c[key] for c in cols] for key in ("mean", "ci_low", "ci_high", "sd", "n")}


def variance_components(matrix: Any) -> dict:
    """Two-way crossed random effects y[s, q] = mu + a_s + b_q + e_sq of a complete seeds x queries matrix (S, Q >= 2),
    by the ANOVA method of moments (negative components truncated at 0).

    Mean squares MS_seed = Q * sum_s (row mean - grand)**2 / (S - 1), MS_query = S * sum_q (column mean - grand)**2 /
    (Q - 1), MS_resid = sum (y - row mean - column mean + grand)**2 / ((S - 1)(Q - 1)); components seed = (MS_seed -
    MS_resid) / Q, query = (MS_query - MS_resid) / S, resid = MS_resid. The variance of the grand mean is
    seed / S + query / Q + resid / (S Q) (unbiased, = (MS_seed + MS_query - MS_resid) / (S Q), while no component
    is truncated); its Satterthwaite degrees of freedom come from that linear combination of mean squares.
    Returns `mean`, `var_mean`, `df`, `seed`, `query`, `resid`, `ms_seed`, `ms_query`, `ms_resid`, `n_seeds`,
    `n_queries`.
    """
    y = to_float64(matrix)
    s, nq = y.shape
    grand = float(y.mean())
    rows, cols = y.mean(axis=1), y.mean(axis=0)
    ms_s = nq * float(np.sum((rows - grand) ** 2)) / (s - 1)
    ms_q = s * float(np.sum((cols - grand) ** 2)) / (nq - 1)
    ms_e = float(np.sum((y - rows[:, None] - cols[None, :] + grand) ** 2)) / ((s - 1) * (nq - 1))
    coef = {"s": 0.0, "q": 0.0, "e": 1.0}  # var_mean = sum coef * MS / (S Q)
    if ms_s > ms_e:
        coef["s"], coef["e"] = 1.0, coef["e"] - 1.0
    if ms_q > ms_e:
        coef["q"], coef["e"] = 1.0, coef["e"] - 1.0
    terms = {"s": (ms_s, s - 1), "q": (ms_q, nq - 1), "e": (ms_e, (s - 1) * (nq - 1))}
    var = sum(coef[k] * terms[k][0] for k in terms) / (s * nq)
    den = sum((coef[k] * terms[k][0] / (s * nq)) ** 2 / terms[k][1] for k in terms)
    return {"mean": grand, "var_mean": max(var, 0.0), "df": var**2 / den if var > 0 and den > 0 else NAN,
            "seed": max(0.0, (ms_s - ms_e) / nq), "query": max(0.0, (ms_q - ms_e) / s), "resid": ms_e,
            "ms_seed": ms_s, "ms_query": ms_q, "ms_resid": ms_e, "n_seeds": s, "n_queries": nq}


def crossed_interval(matrix: Any, metric: str, confidence: float = 0.95) -> dict:
    """Interval of the grand mean of a seeds x queries matrix of per-query values when every seed measured the SAME
    queries: it covers the population mean over seeds and queries, where one from per-seed means (`interval`) would
    miss the variance of which queries were drawn (nominal 95% covered 0.65-0.69 at 10 seeds).

    `matrix`: (n_seeds, n_queries), one value per seed and query (a 0/1 outcome for proportions). Seeds that are all
    NaN are dropped, then every query with a NaN (the ANOVA needs a complete table). The variance of the grand mean
    and its Satterthwaite degrees of freedom come from `variance_components`; the bounds are the quantity's: "score"
    (and for proportions the hull with Wilson over the n_queries shared queries, which floors the width when the
    components vanish), "t" clipped to the range otherwise. Returns `interval`'s keys with `method` "crossed" and
    `per_seed` the seeds' means, plus `n_queries`, `df` and `components` (seed, query, resid). The interval is NaN
    with fewer than 2 seeds or 2 queries. Correlations (Fisher z) are not means over queries: a ValueError.
    """
    q = quantity(metric)
    if q.method == "fisher_z":
        raise ValueError(f"{metric!r} is a correlation per seed, not a mean over queries")
    y = to_float64(matrix)
    if y.ndim != 2:
        raise ValueError(f"expected shape (n_seeds, n_queries), got {y.shape}")
    y = y[~np.all(np.isnan(y), axis=1)]
    y = y[:, ~np.any(np.isnan(y), axis=0)]
    s, nq = y.shape
    per_seed = y.mean(axis=1) if nq else np.full(s, NAN)
    out = {"mean": float(y.mean()) if y.size else NAN, "ci_low": NAN, "ci_high": NAN, "n": s, "n_queries": nq,
           "sd": float(np.std(per_seed, ddof=1)) if s > 1 and nq else NAN, "method": "crossed",
           "range": [v if math.isfinite(v) else None for v in (q.low, q.high)],
           "per_seed": [float(v) for v in per_seed], "df": NAN, "components": None}
    if s < 2 or nq < 2:
        return out
    vc = variance_components(y)
    mean, var, df = vc["mean"], vc["var_mean"], vc["df"]
    out.update(df=df, components={k: vc[k] for k in ("seed", "query", "resid")})
    quant = _t_quantile(confidence, df if df == df else nq - 1)
    if q.method in ("score", "wilson"):
        lo, hi = _bounded_score(mean, var, quant, q.low, q.high)
        if q.method == "wilson":
            p = min(1.0, max(0.0, mean))
            a, b = _wilson(p, nq, quant)
            lo, hi = max(0.0, min(lo, a, mean)), min(1.0, max(hi, b, mean))
    else:
        h = quant * math.sqrt(var)
        lo, hi = _clip(mean - h, q), _clip(mean + h, q)
    out.update(ci_low=float(lo), ci_high=float(hi))
    return out


# ------------------------------------------------------------------------------------------------------------
# Verdicts only when the data can carry them.

MIN_SEEDS = 5  # below this a comparison says "too few seeds to tell" (Wilcoxon cannot reach p < .05 below 6)
ALPHA = 0.05
# The five verdicts, each with one meaning (a "not testable" verdict carries its reason after a colon).
REPRODUCED = "reproduced"  # >= MIN_SEEDS, Holm p < ALPHA, the effect's interval on the claimed side, effect >= SESOI
OPPOSITE = "opposite"  # the same evidence, on the other side
INCONCLUSIVE = "inconclusive"  # enough seeds, but the interval spans 0 or the effect is below the SESOI
NOT_TESTABLE = "not testable"  # a precondition of the claim fails: "not testable: <reason>"
TOO_FEW = "too few seeds to tell"
VERDICTS = (REPRODUCED, OPPOSITE, INCONCLUSIVE, NOT_TESTABLE, TOO_FEW)


def verdict_kind(v: str) -> str:
    """The verdict word of a verdict string ("not testable: the model is at floor" -> "not testable")."""
    return NOT_TESTABLE if v.startswith(NOT_TESTABLE) else v


def not_testable(reason: str) -> str:
    return f"{NOT_TESTABLE}: {reason}"


# Smallest effect of interest per kind of quantity: a consistent difference smaller than this is "inconclusive".
SESOI_DEFAULTS = {"difference": 0.02, "correlation": 0.1}


def sesoi_kind(metric: str) -> str:
    """Correlations (per-seed r, rank correlations) get the correlation SESOI; every other quantity (cosines,
    accuracies, proportions and their differences) the difference SESOI."""
    corr = quantity(metric).method == "fisher_z" or metric.startswith("kendall") or metric == "fisher_z"
    return "correlation" if corr else "difference"


def compare(a: Any, b: Any, metric: str) -> dict:
    """Paired comparison a - b across seeds (b may be a constant, e.g. 0): the effect first, tests second.

    Returns `diff` (mean difference with its interval, the range being that of a difference of `metric`),
    `dz` (standardised effect: mean / sd of the differences), the paired t and Wilcoxon p-values (`paired_test`)
    and `n`. `metric` names the compared quantity (its range bounds the difference's interval).
    """
    a = to_float64(a).ravel()
    b = np.broadcast_to(to_float64(b), a.shape)
    pt = paired_test(a, b)
    q = quantity(metric)
    span = q.high - q.low
    d = a - b
    d = d[~np.isnan(d)]
    t = t_interval(d)
    diff = {**t, "ci_low": _clip(t["ci_low"], Quantity(-span, span, "t", "")),
            "ci_high": _clip(t["ci_high"], Quantity(-span, span, "t", "")), "method": "t",
            "per_seed": [float(v) for v in d]}
    dz = t["mean"] / t["sd"] if t["n"] > 1 and t["sd"] > 0 else NAN
    return {"diff": diff, "dz": float(dz), "scale": metric, **pt}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone); NaN p-values are left out and stay NaN."""
    items = sorted(((p, k) for k, p in pvalues.items() if p == p), key=lambda x: x[0])
    m, running, out = len(items), 0.0, {k: NAN for k in pvalues}
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def verdict(test: dict, p_adjusted: float | None, direction: int = 1, sesoi: float = 0.0) -> str:
    """`reproduced` when the claimed direction holds: the difference's interval excludes 0 on the claimed side,
    the (multiplicity-adjusted) p < ALPHA and the mean difference is at least `sesoi`; `opposite` when the same
    holds on the other side; else `inconclusive`. Fewer than MIN_SEEDS seeds: `too few seeds to tell`. Seeds that
    all agree (zero variance) are decided by the interval and p, like any others."""
    d = test["diff"]
    if d["n"] < MIN_SEEDS:
        return TOO_FEW
    p = test["t_p"] if p_adjusted is None else p_adjusted
    if not (p == p and p < ALPHA) or abs(d["mean"]) < sesoi:
        return INCONCLUSIVE
    claimed = d["ci_low"] > 0 if direction > 0 else d["ci_high"] < 0
    other = d["ci_high"] < 0 if direction > 0 else d["ci_low"] > 0
    return REPRODUCED if claimed else OPPOSITE if other else INCONCLUSIVE


def level_verdict(value: dict, threshold: float, sesoi: float = 0.0) -> str:
    """A claim that a quantity lies above a level (the paper's Rec2FTP > 50 %), read off its interval: above the
    level by at least `sesoi` -> reproduced, below it by as much -> opposite. Seeds that all agree are fine (a
    pooled proportion's interval is still an interval)."""
    if value["n"] < MIN_SEEDS or value["ci_low"] != value["ci_low"]:
        return TOO_FEW
    if value["ci_low"] > threshold and value["mean"] - threshold >= sesoi:
        return REPRODUCED
    if value["ci_high"] < threshold and threshold - value["mean"] >= sesoi:
        return OPPOSITE
    return INCONCLUSIVE


def headline(claim: str, metric: str, value: dict, paper: str, test: dict | None = None, direction: int = 1,
             threshold: float | None = None, percent: bool = False, sesoi: float = 0.0,
             untestable: str | None = None, caveat: str | None = None) -> dict:
    """One headline finding of a study: the claim a paper makes, this run's value, the paper's value and the test
    behind the verdict (filled in by `judge`). With no test, the claim is `value > threshold` read off the
    interval (used where the paper states a level, not a comparison). `percent`: shown ×100 with "%", as the
    paper prints it. `sesoi`: the smallest effect of interest, on the scale of the test's difference (or of the
    value above the threshold). `untestable`: the reason a precondition of the claim fails, if one does (the
    verdict is then "not testable: <reason>" and the test stays out of the Holm family). `caveat` qualifies the
    verdict (e.g. the tuning compared changed little of the model); `preconditions` gives both."""
    return {"claim": claim, "metric": metric, "value": value, "paper": paper, "test": test, "direction": direction,
            "threshold": threshold, "percent": percent, "sesoi": sesoi, "untestable": untestable, "caveat": caveat}


def preconditions(checks: list[dict], failed: list[str] = ()) -> tuple[str | None, str | None]:
    """(untestable, caveat) of a claim resting on the settings `checks` (dicts with `reason`, `weak`,
    `barely_moved`, as `tuning_check` returns) and on preconditions known to have failed (`failed`: reasons). A
    failed precondition or a setting that barely moved the model makes it not testable, naming every reason; a
    setting that moved it little by one measure puts a caveat on it."""
    untestable = [*failed, *(t["reason"] for t in checks if t.get("barely_moved"))]
    if untestable:
        return "; ".join(untestable), None
    weak = [t["reason"] for t in checks if t.get("weak")]
    return None, ("; ".join(weak) + ", so this comparison says little") if weak else None


def judge(headlines: list[dict]) -> list[dict]:
    """Holm-adjust the p-values of a study's testable headline tests together, then give each its verdict."""
    adj = holm({str(i): h["test"]["t_p"] for i, h in enumerate(headlines)
                if h["test"] is not None and not h.get("untestable")})
    for i, h in enumerate(headlines):
        h["p_holm"] = adj.get(str(i), NAN)
        if h.get("untestable"):
            h["verdict"] = not_testable(h["untestable"])
        elif h["test"] is not None:
            h["verdict"] = verdict(h["test"], h["p_holm"], h["direction"], h.get("sesoi", 0.0))
        else:
            h["verdict"] = level_verdict(h["value"], h["threshold"], h.get("sesoi", 0.0))
    return headlines


MULTIPLICITY = (f"p-values of a study's testable headline tests are Holm-adjusted together. Verdicts: "
                f"'{REPRODUCED}' needs at least {MIN_SEEDS} seeds, an interval of the effect that excludes 0 on the "
                f"claimed side, an adjusted p < {ALPHA} and an effect of at least the claim's smallest effect of "
                f"interest (SESOI); '{OPPOSITE}' is the same on the other side; '{INCONCLUSIVE}' is enough seeds "
                f"without either; '{NOT_TESTABLE}: <reason>' means a precondition of the claim failed; "
                f"'{TOO_FEW}' means fewer than {MIN_SEEDS} seeds")


# How far a tuning moved the model, by two measures (iclft's rule; stated in every warning it raises): either one
# small puts a caveat on the verdicts that rest on the tuning, both small makes them "not testable".
TINY_UPDATE = 0.1  # its last-layer update is under a tenth of ICL's (‖Δh‖/‖h_ZSL‖)
TINY_CHANGED = 0.02  # it changed under 2% of zero-shot's predictions


def tuning_check(name: str, update: dict, update_icl: dict, changed: dict, what: str) -> dict:
    """Did the tuning `name` move the model enough for its comparison with ICL to mean something? `update`,
    `update_icl`: intervals of ‖h − h_ZSL‖/‖h_ZSL‖ at the last layer; `changed`: interval of the share of
    queries whose prediction differs from zero-shot's. Returns the numbers, `small` (the measures that are
    small), `weak` (either is: a caveat), `barely_moved` (both are: not testable), a warning and `reason`."""
    u, ui, c = update.get("mean"), update_icl.get("mean"), changed.get("mean")
    ratio = u / ui if u == u and ui == ui and ui else float("nan")
    small = []
    if ratio == ratio and ratio < TINY_UPDATE:
        small.append(f"its update is {ratio:.2f}× ICL's (under {TINY_UPDATE:g}×)")
    if c == c and c < TINY_CHANGED:
        small.append(f"it changed {100 * c:.1f}% of zero-shot's predictions (under {100 * TINY_CHANGED:g}%)")
    barely, weak = len(small) == 2, bool(small)
    reason = f"{name} barely moved the model: {' and '.join(small)}" if small else None
    warning = None
    if weak:
        warning = (f"{name} {'barely changed' if barely else 'changed little of'} the model: it moved the {what} by "
                   f"{100 * u:.1f}% of its norm (ICL: {100 * ui:.1f}%) and changed {100 * c:.1f}% of zero-shot's "
                   f"predictions. iclft puts a caveat on a comparison with a tuning whose update is under "
                   f"{TINY_UPDATE:g}× ICL's or that changes under {100 * TINY_CHANGED:g}% of the predictions, and "
                   "calls it not testable when both hold. Train it harder (more steps or a larger learning rate) "
                   "before reading the comparisons that involve it.")
    return {"setting": name, "update": update, "update_icl": update_icl, "update_vs_icl": ratio,
            "changed": changed, "small": small, "weak": weak, "barely_moved": barely, "warning": warning,
            "reason": reason}
