"""Intervals that respect the quantity (one rule per metric), their coverage, Holm, and verdicts."""

import math

import numpy as np
import pytest
from scipy import stats

from iclft.metrics.stats import (
    QUANTITIES,
    compare,
    holm,
    interval,
    layer_intervals,
    quantity,
)


def _draw(metric: str, n: int, rng) -> tuple[np.ndarray, int | None]:
    q = quantity(metric)
    if q.method == "wilson":
        return rng.binomial(12, rng.uniform(size=n)) / 12, 12
    lo, hi = (q.low, q.high) if math.isfinite(q.high) else (0.0, 50.0)
    # heavy mass near the ends is where t-intervals used to leave the range
    return lo + (hi - lo) * rng.beta(0.3, 0.3, size=n), None


@pytest.mark.parametrize("metric", sorted(set(QUANTITIES) | {"acc_icl"}))
@pytest.mark.parametrize("n", [2, 3, 30])
def test_every_interval_stays_in_its_range(metric, n):
    rng = np.random.default_rng(n)
    q = quantity(metric)
    for _ in range(50):
        x, trials = _draw(metric, n, rng)
        r = interval(x, metric, trials=trials)
        assert q.low <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= q.high, (metric, x, r)
        assert r["n"] == n and len(r["per_seed"]) == n


def test_wilson_worked_example_single_seed():
    # one seed, 8/10: plain Wilson with z = 1.959964: centre (0.8 + 0.19208)/1.38415, half 0.5663/...
    r = interval([0.8], "acc", trials=10)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    assert r["mean"] == pytest.approx(0.8)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((centre - half, centre + half))


def test_zero_variance_proportions_keep_binomial_width():
    # 5 seeds all at 20/20: seeds agree, but 100 trials cannot pin the rate to exactly 1
    r = interval([1.0] * 5, "acc", trials=20)
    assert r["ci_high"] == 1.0 and 0.9 < r["ci_low"] < 0.99


def test_fisher_z_worked_example():
    # r = 0.5, 0.7: z = 0.549306, 0.867301; mean 0.708303 -> tanh 0.609448; se = sd/√2 = 0.159
    r = interval([0.5, 0.7], "pearson_r")
    z = np.arctanh([0.5, 0.7])
    half = 12.706204736174698 * np.std(z, ddof=1) / math.sqrt(2)
    assert r["mean"] == pytest.approx(math.tanh(z.mean()))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((math.tanh(z.mean() - half), math.tanh(z.mean() + half)))


def _unit_bounds(x):
    """The "score" interval of a cosine sample on the unit scale, with p, v and the t quantile it solves for."""
    r = interval(x, "d_icl_it")
    n = len(x)
    p, v = (np.mean(x) + 1) / 2, np.var(x, ddof=1) / n / 4
    d = np.asarray(x) - np.mean(x)
    g2 = np.mean(d**4) / np.mean(d**2) ** 2 - 3  # excess kurtosis; degrees of freedom 2 / (2/(n-1) + max(g2, 0)/n)
    t = stats.t.ppf(0.975, 2 / (2 / (n - 1) + max(g2, 0) / n))
    return (r["ci_low"] + 1) / 2, (r["ci_high"] + 1) / 2, p, v, t, r


def test_seed_degrees_of_freedom_drop_for_heavy_tails():
    # [0.9, 0.95, 0.99, 0.5, 0.97]: deviations from 0.862 = [.038, .088, .128, -.362, .108]; m2 = 0.16828 / 5 =
    # 0.033656, m4 = (2.085e-6 + 5.997e-5 + 2.684e-4 + 0.017172 + 1.3605e-4) / 5 = 0.0035278 -> g2 = 0.0035278 /
    # 0.033656^2 - 3 = 0.114449 -> df = 2 / (2/4 + 0.114449/5) = 3.8249
    from iclft.metrics.stats import _seed_df

    assert _seed_df(np.array([0.9, 0.95, 0.99, 0.5, 0.97])) == pytest.approx(2 / (0.5 + 0.114449 / 5), rel=1e-5)
    assert _seed_df(np.array([0.1, 0.2, 0.7])) == 2.0  # three values: g2 = -1.5 always, so n - 1
    assert _seed_df(np.arange(10.0)) == 9.0  # light tails (g2 < 0): n - 1


def test_score_interval_solves_its_equation():
    # the bounds are the two roots of (p - mu)^2 = t^2 v (mu(1-mu) / (p(1-p)))^1.5 on the unit scale (y = (cos+1)/2)
    x = [0.9, 0.95, 0.99, 0.5, 0.97]
    a, b, p, v, t, r = _unit_bounds(x)
    assert r["method"] == "score" and r["mean"] == pytest.approx(np.mean(x))
    for mu in (a, b):
        assert (p - mu) ** 2 == pytest.approx(t * t * v * (mu * (1 - mu) / (p * (1 - p))) ** 1.5, rel=1e-9)
    # the same set by brute force on a grid
    grid = np.linspace(0, 1, 200001)
    ok = (p - grid) ** 2 <= t * t * v * (grid * (1 - grid) / (p * (1 - p))) ** 1.5
    assert grid[ok].min() == pytest.approx(a, abs=1e-5) and grid[ok].max() == pytest.approx(b, abs=1e-5)
    # near the upper bound it reaches further down than up, and never to the bound itself
    assert np.mean(x) - r["ci_low"] > r["ci_high"] - np.mean(x) and r["ci_high"] < 1.0


def test_score_interval_is_the_t_interval_far_from_the_bounds():
    x = [0.2 - 1e-4, 0.2, 0.2 + 1e-4]
    r = interval(x, "simaou")
    half = 4.302652729749464 * np.std(x, ddof=1) / math.sqrt(3)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half), rel=1e-6)


def test_score_interval_degenerate_cases():
    one = interval([0.5], "simaou")
    assert one["mean"] == 0.5 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    same = interval([0.3, 0.3, 0.3], "simaou")  # seeds that agree exactly: zero width, like the t-interval
    assert same["ci_low"] == pytest.approx(0.3) and same["ci_high"] == pytest.approx(0.3)
    top = interval([1.0, 1.0], "simaou")
    assert top["ci_low"] == top["ci_high"] == 1.0


def test_proportion_is_the_hull_of_wilson_and_the_seed_spread():
    # 3 seeds of 150 trials: 0.90, 0.95, 0.97 -> pooled p = 0.94; between-seed variance of the ratio estimator
    # v = 3/2 * sum((k - p m)^2) / (450^2); t_2 quantile; the seed spread is far wider than the binomial Wilson
    k = np.array([135.0, 142.5, 145.5])
    r = interval(k / 150, "acc", trials=150)
    p, t = k.sum() / 450, 4.302652729749464
    v = 1.5 * np.sum((k - p * 150) ** 2) / 450**2
    a, b = r["ci_low"], r["ci_high"]
    assert r["mean"] == pytest.approx(0.94) and r["method"] == "wilson"
    for mu in (a, b):
        assert (p - mu) ** 2 == pytest.approx(t * t * v * (mu * (1 - mu) / (p * (1 - p))) ** 1.5, rel=1e-9)
    # Wilson over 450 trials at t_2 is narrower on both sides
    centre = (p + t * t / 900) / (1 + t * t / 450)
    half = t / (1 + t * t / 450) * math.sqrt(p * (1 - p) / 450 + t * t / (4 * 450**2))
    assert a < centre - half and b > centre + half


def test_layer_intervals_per_column():
    m = np.array([[0.1, 0.9], [0.2, 1.0], [0.3, 0.95]])
    r = layer_intervals(m, "simaou")
    assert r["n"] == [3, 3] and 0.95 < r["ci_high"][1] < 1.0
    assert r["mean"] == pytest.approx([0.2, 0.95])
    assert r["ci_low"] == [interval(m[:, j], "simaou")["ci_low"] for j in range(2)]


def _coverage(draw, truth, metric, n, reps, rng, trials=None):
    hits = 0
    for _ in range(reps):
        r = interval(draw(n), metric, trials=trials)
        hits += r["ci_low"] <= truth <= r["ci_high"]
    return hits / reps


def test_coverage_is_about_95_percent():
    rng = np.random.default_rng(12345)
    reps = 400
    # clustered proportions: each seed has its own rate (Beta(6,4), mean 0.6), 20 trials per seed
    prop = lambda n: rng.binomial(20, rng.beta(6, 4, size=n)) / 20  # noqa: E731
    # cosine-like values skewed towards 1 (2·Beta(8,2) − 1, mean 0.6)
    cos = lambda n: 2 * rng.beta(8, 2, size=n) - 1  # noqa: E731

    def corr(n):  # per-seed Pearson r of 30 bivariate-normal pairs with rho = 0.5
        x = rng.standard_normal((n, 30))
        y = 0.5 * x + math.sqrt(0.75) * rng.standard_normal((n, 30))
        xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        return (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))

    for n in (10, 30):
        for name, draw, metric, trials in (("proportion", prop, "acc", 20), ("cosine", cos, "d_icl_it", None),
                                           ("correlation", corr, "pearson_r", None)):
            c = _coverage(draw, 0.6 if name != "correlation" else 0.5, metric, n, reps, rng, trials)
            assert 0.90 <= c <= 0.99, (name, n, c)


def test_holm_worked_example():
    # p sorted 0.01, 0.02, 0.04 (m = 3): 0.03, 0.04, 0.04 (monotone); NaN stays NaN
    adj = holm({"a": 0.04, "b": 0.01, "c": 0.02, "d": float("nan")})
    assert adj["b"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.04) and adj["a"] == pytest.approx(0.04)
    assert math.isnan(adj["d"])


def test_compare_reports_effect_first():
    a = np.array([0.5, 0.6, 0.7, 0.55, 0.65, 0.6])
    c = compare(a, 0.0, "d_icl_it")
    assert c["diff"]["mean"] == pytest.approx(a.mean())
    assert c["dz"] == pytest.approx(a.mean() / a.std(ddof=1))
    assert c["t_p"] < 1e-4 and c["n"] == 6


def test_unknown_metric_has_no_silent_default():
    with pytest.raises(KeyError):
        interval([1.0, 2.0], "no_such_metric")


def test_clamp_ylim_keeps_axes_in_range():
    from iclft.report.figures import clamp_ylim, plt

    fig, ax = plt.subplots()
    ax.fill_between([0, 1], [-3, -3], [3, 3])
    clamp_ylim(ax, "d_icl_it")
    lo, hi = ax.get_ylim()
    assert -1.1 < lo < -1 and 1 < hi < 1.1
    plt.close(fig)
