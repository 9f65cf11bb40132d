"""Intervals that respect the quantity (one rule per metric), their coverage, Holm, and verdicts."""

import math

import numpy as np
import pytest

from iclft.metrics.stats import (
    MIN_SEEDS,
    NOT_REPRODUCED,
    QUANTITIES,
    REPRODUCED,
    TOO_FEW,
    compare,
    holm,
    interval,
    layer_intervals,
    quantity,
    verdict,
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


def test_t_interval_is_clipped_not_moved():
    x = [0.9, 0.95, 0.99, 0.5, 0.97]
    r = interval(x, "d_icl_it")
    half = 2.7764451051977987 * np.std(x, ddof=1) / math.sqrt(5)
    assert r["mean"] == pytest.approx(np.mean(x))
    assert r["ci_low"] == pytest.approx(np.mean(x) - half) and r["ci_high"] == 1.0


def test_layer_intervals_per_column():
    m = np.array([[0.1, 0.9], [0.2, 1.0], [0.3, 0.95]])
    r = layer_intervals(m, "simaou")
    assert r["n"] == [3, 3] and r["ci_high"][1] == 1.0
    assert r["mean"] == pytest.approx([0.2, 0.95])


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


def test_verdicts_need_enough_seeds_and_variance():
    strong = np.linspace(0.4, 0.6, MIN_SEEDS)
    assert verdict(compare(strong, 0.0, "simaou"), None) == REPRODUCED
    assert verdict(compare(strong, 0.0, "simaou"), None, direction=-1) == NOT_REPRODUCED
    assert verdict(compare(strong[: MIN_SEEDS - 1], 0.0, "simaou"), None) == TOO_FEW
    # zero variance: a paired t would say p = 0; we say nothing
    assert verdict(compare([0.3] * 8, [0.1] * 8, "acc"), None) == TOO_FEW
    # multiplicity: the same data, but an adjusted p above alpha
    assert verdict(compare(strong, 0.0, "simaou"), 0.2) == NOT_REPRODUCED


def test_unknown_metric_has_no_silent_default():
    with pytest.raises(KeyError):
        interval([1.0, 2.0], "no_such_metric")


def test_judge_applies_holm_across_a_studys_headlines():
    from iclft.metrics.stats import headline, judge

    rng = np.random.default_rng(3)
    # two effects each significant alone (p ≈ 0.03-0.04) but not after Holm over both
    tests = []
    for target in (0.03, 0.04):
        for _ in range(20000):
            x = rng.normal(0.3, 0.5, size=8)
            c = compare(x, 0.0, "d_icl_it")
            if abs(c["t_p"] - target) < 0.004 and c["diff"]["ci_low"] > 0:
                tests.append(c)
                break
    assert len(tests) == 2
    alone = [verdict(t, None) for t in tests]
    judged = judge([headline("a", "m", t["diff"], "p", t) for t in tests])
    assert alone == [REPRODUCED, REPRODUCED]
    assert [h["verdict"] for h in judged] == [NOT_REPRODUCED, NOT_REPRODUCED]
    assert all(h["p_holm"] > 0.05 for h in judged)
    # a level claim (no test) is read off the interval, and still needs enough seeds
    level = judge([headline("b", "Rec2FTP", interval([0.8, 0.9, 0.85, 0.95, 0.9], "rec2ftp", trials=40), "85.6",
                            threshold=0.5)])
    assert level[0]["verdict"] == REPRODUCED
    few = judge([headline("b", "Rec2FTP", interval([0.8, 0.9], "rec2ftp", trials=40), "85.6", threshold=0.5)])
    assert few[0]["verdict"] == TOO_FEW


def test_clamp_ylim_keeps_axes_in_range():
    from iclft.report.figures import clamp_ylim, plt

    fig, ax = plt.subplots()
    ax.fill_between([0, 1], [-3, -3], [3, 3])
    clamp_ylim(ax, "d_icl_it")
    lo, hi = ax.get_ylim()
    assert -1.1 < lo < -1 and 1 < hi < 1.1
    plt.close(fig)
