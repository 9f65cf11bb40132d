"""Intervals that cover the population (benchmarks/coverage.py, small): seeds x queries crossed random effects by
hand, and a few hundred simulated studies of the audit's regimes."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from iclft.metrics.stats import crossed_interval, interval, variance_components

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"


def _bench():
    spec = importlib.util.spec_from_file_location("coverage_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variance_components_by_hand_both_components():
    # grand 33/9; row means 2, 3, 6; column means 7/3, 11/3, 5
    # MS_seed = 3 * ((2-11/3)^2 + (3-11/3)^2 + (6-11/3)^2) / 2 = 3 * (26/3) / 2 = 13
    # MS_query = 3 * ((7/3-11/3)^2 + 0 + (5-11/3)^2) / 2 = 3 * (32/9) / 2 = 16/3
    # residuals y - row - column + grand: [1/3, 0, -1/3], [1/3, 1, -4/3], [-2/3, -1, 5/3]; SS = 22/3, df 4 -> 11/6
    y = [[1, 2, 3], [2, 4, 3], [4, 5, 9]]
    vc = variance_components(y)
    assert vc["mean"] == pytest.approx(11 / 3)
    assert (vc["ms_seed"], vc["ms_query"], vc["ms_resid"]) == pytest.approx((13, 16 / 3, 11 / 6))
    assert vc["seed"] == pytest.approx((13 - 11 / 6) / 3) and vc["query"] == pytest.approx((16 / 3 - 11 / 6) / 3)
    assert vc["resid"] == pytest.approx(11 / 6)
    # var = seed/3 + query/3 + resid/9 = (MS_seed + MS_query - MS_resid) / 9 = 16.5 / 9
    assert vc["var_mean"] == pytest.approx(16.5 / 9)
    # Satterthwaite: (16.5/9)^2 / ((13/9)^2/2 + (16/27)^2/2 + (11/54)^2/4) = 272.25 / 99.5625 = 2.734463
    assert vc["df"] == pytest.approx(272.25 / (13**2 / 2 + (16 / 3) ** 2 / 2 + (11 / 6) ** 2 / 4))
    r = crossed_interval(y, "fisher_z")  # an unbounded quantity: t-interval with the Satterthwaite df
    from scipy import stats

    half = stats.t.ppf(0.975, vc["df"]) * math.sqrt(16.5 / 9)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((11 / 3 - half, 11 / 3 + half))
    assert r["method"] == "crossed" and r["n"] == 3 and r["n_queries"] == 3
    assert r["per_seed"] == pytest.approx([2, 3, 6])


def test_variance_components_by_hand_truncated_seed_component():
    # grand 3.5; rows 3, 4 -> MS_seed = 3 * 0.5 / 1 = 1.5; columns 2, 3, 5.5 -> MS_query = 2 * 6.5 / 2 = 6.5;
    # residuals [-.5, -.5, 1], [.5, .5, -1]: SS 3, df 2 -> MS_resid = 1.5 = MS_seed, so the seed component is 0
    vc = variance_components([[1, 2, 6], [3, 4, 5]])
    assert (vc["ms_seed"], vc["ms_query"], vc["ms_resid"]) == pytest.approx((1.5, 6.5, 1.5))
    assert vc["seed"] == 0 and vc["query"] == pytest.approx(2.5) and vc["resid"] == pytest.approx(1.5)
    # var = 2.5/3 + 1.5/6 = MS_query / 6; one mean square left, so df = its own, Q - 1 = 2
    assert vc["var_mean"] == pytest.approx(6.5 / 6) and vc["df"] == pytest.approx(2.0)


def test_crossed_interval_edges():
    y = np.array([[0.1, 0.2, np.nan, 0.3], [0.2, 0.1, 0.5, 0.4], [np.nan] * 4, [0.3, 0.3, 0.2, 0.2]])
    r = crossed_interval(y, "simaou")  # the all-NaN seed goes, then the query with a NaN
    assert r["n"] == 3 and r["n_queries"] == 3 and -1 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1
    assert r["mean"] == pytest.approx(np.mean([[0.1, 0.2, 0.3], [0.2, 0.1, 0.4], [0.3, 0.3, 0.2]]))
    one = crossed_interval([[0.1, 0.2]], "simaou")
    assert one["n"] == 1 and math.isnan(one["ci_low"])
    with pytest.raises(ValueError):
        crossed_interval([[0.1, 0.2], [0.3, 0.4]], "pearson_r")
    # every seed gets every shared query right: no variance at all, but 20 queries cannot pin the rate to 1
    ones = crossed_interval(np.ones((4, 20)), "acc")
    assert ones["ci_high"] == 1.0 and 0.7 < ones["ci_low"] < 0.95
    # the same 0/1 outcomes in every seed (zero-shot, say): the interval is that of 20 queries, not of 80 trials
    col = (np.arange(20) < 14).astype(float)
    same = crossed_interval(np.tile(col, (4, 1)), "acc")
    naive = interval(np.full(4, 0.7), "acc", trials=20)
    assert same["mean"] == pytest.approx(0.7) and same["ci_low"] < naive["ci_low"] - 0.05


def test_crossed_reduces_to_the_seed_spread_when_queries_do_not_matter():
    rng = np.random.default_rng(0)
    y = 0.2 + rng.normal(0, 0.05, (5, 1)) + 1e-9 * rng.normal(size=(5, 200))
    r, per_seed = crossed_interval(y, "simaou"), interval(y.mean(1), "simaou")
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((per_seed["ci_low"], per_seed["ci_high"]), abs=1e-6)


def test_small_simulation_covers():
    bench = _bench()
    regimes = {r[0]: r for r in bench.REGIMES}
    picked = [regimes["(b) query_shared"], regimes["(c) proportion_095"], regimes["(d) skewed_cosine"]]
    rows = bench.run(picked, reps=200, seed=0, which="new")
    cov = {(r["regime"], r["method"]): {s: c[0] for s, c in r["cells"].items()} for r in rows}
    for key in (("(b) query_shared", "crossed"), ("(c) proportion_095", "new"), ("(d) skewed_cosine", "new")):
        assert min(cov[key].values()) >= 0.88, (key, cov[key])  # nominal 0.95; 200 studies: se ~0.015
    # per-seed means of shared queries miss the query variance (about 0.68 at 10 seeds)
    assert cov[("(b) query_shared", "naive new")][10] <= 0.80
