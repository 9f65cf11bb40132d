"""t-intervals, correlations and paired tests against worked values."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from iclft.metrics.stats import correlation, paired_test, per_layer_interval, t_interval

T975 = {1: 12.706204736174698, 2: 4.302652729749464, 4: 2.7764451051977987}  # t_{0.975, df}


def test_t_quantiles_are_the_textbook_ones():
    for df, q in T975.items():
        assert stats.t.ppf(0.975, df) == pytest.approx(q)


def test_t_interval_worked_example():
    # [1..5]: mean 3, sd = √2.5, se = √2.5/√5 = √0.5, half-width = 2.7764451 * 0.7071068 = 1.9632432
    r = t_interval([1, 2, 3, 4, 5])
    assert r["n"] == 5
    assert r["mean"] == pytest.approx(3.0)
    assert r["sd"] == pytest.approx(math.sqrt(2.5))
    assert r["ci_low"] == pytest.approx(3 - 1.9632432, abs=1e-6)
    assert r["ci_high"] == pytest.approx(3 + 1.9632432, abs=1e-6)
    # 90%: t_{0.95,4} = 2.1318468 -> half-width 1.5074437
    r90 = t_interval([1, 2, 3, 4, 5], confidence=0.9)
    assert r90["ci_high"] == pytest.approx(3 + 2.1318468 * math.sqrt(0.5), abs=1e-6)


def test_t_interval_drops_nan_and_small_n():
    # [1, nan, 3]: n = 2, mean 2, sd √2, se 1, half-width = t_{0.975,1} = 12.7062047
    r = t_interval([1.0, float("nan"), 3.0])
    assert r["n"] == 2 and r["mean"] == pytest.approx(2.0)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2 - T975[1], 2 + T975[1]))
    one = t_interval([4.0])
    assert one["n"] == 1 and one["mean"] == 4.0
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"]) and math.isnan(one["sd"])
    empty = t_interval([float("nan")])
    assert empty["n"] == 0 and math.isnan(empty["mean"])


def test_per_layer_interval():
    # layer 0: [1,2,3] -> mean 2, sd 1, half = 4.3026527/√3 = 2.4841377
    # layer 1: [10, nan, 30] -> n 2, mean 20, sd √200, se 10, half = 127.062047
    r = per_layer_interval(np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0]]))
    assert r["n"] == [3, 2]
    np.testing.assert_allclose(r["mean"], [2.0, 20.0])
    np.testing.assert_allclose(r["ci_low"], [2 - 2.4841377, 20 - 127.062047], atol=1e-5)
    np.testing.assert_allclose(r["ci_high"], [2 + 2.4841377, 20 + 127.062047], atol=1e-5)
    with pytest.raises(ValueError):
        per_layer_interval([1.0, 2.0])


def test_correlation_worked_example():
    # x = 1..5, y = [2,1,4,3,5]: deviations dx = [-2,-1,0,1,2], dy = [-1,-2,1,0,2]
    # Σdxdy = 8, Σdx² = Σdy² = 10 -> r = 0.8; ranks equal the values -> rho = 0.8 too.
    # p: t = r√(n-2)/√(1-r²) = 0.8·√3/0.6 = 2.3094011, two-sided with 3 df.
    x = [1, 2, 3, 4, 5, float("nan"), 6]
    y = [2, 1, 4, 3, 5, 7, float("nan")]  # the last two pairs contain a NaN and are dropped
    r = correlation(x, y)
    p = 2 * stats.t.sf(0.8 * math.sqrt(3) / 0.6, 3)
    assert p == pytest.approx(0.1041, abs=1e-4)
    assert r["n"] == 5
    assert r["pearson_r"] == pytest.approx(0.8) and r["spearman_rho"] == pytest.approx(0.8)
    assert r["pearson_p"] == pytest.approx(p) and r["spearman_p"] == pytest.approx(p)


def test_correlation_degenerate_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        const = correlation([1, 2, 3, 4], [5, 5, 5, 5])
        short = correlation([1, 2], [3, 4])
    for r in (const, short):
        assert all(math.isnan(r[k]) for k in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p"))
    assert const["n"] == 4 and short["n"] == 2


def test_paired_test_worked_example():
    # d = a - b = [2,3,1,4]: mean 2.5, sd √(5/3), t = 2.5 / (√(5/3)/2) = √15
    # Wilcoxon: all differences positive -> W = min(W+, W-) = 0; exact p = 2 * 1/2^4 = 0.125
    r = paired_test([3, 5, 4, 8], [1, 2, 3, 4])
    assert r["n"] == 4 and r["mean_diff"] == pytest.approx(2.5)
    assert r["t"] == pytest.approx(math.sqrt(15))
    assert r["t_p"] == pytest.approx(2 * stats.t.sf(math.sqrt(15), 3))
    assert r["wilcoxon_stat"] == 0.0 and r["wilcoxon_p"] == pytest.approx(0.125)


def test_paired_test_wilcoxon_mixed_signs():
    # d = [1,-2,3,4,5]: ranks of |d| are 1..5, W- = 2 = statistic. Sign patterns with W- <= 2:
    # {}, {1}, {2} -> 3 of 2^5; two-sided p = 2 * 3/32 = 0.1875
    r = paired_test([1, -2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert r["wilcoxon_stat"] == 2.0 and r["wilcoxon_p"] == pytest.approx(0.1875)


def test_paired_test_edge_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["mean_diff"] == 0.0 and math.isnan(same["t"])
    assert same["t_p"] == 1.0 and same["wilcoxon_stat"] == 0.0 and same["wilcoxon_p"] == 1.0
    tiny = paired_test([1.0, float("nan")], [0.0, 1.0])  # one usable pair
    assert tiny["n"] == 1 and tiny["mean_diff"] == 1.0 and math.isnan(tiny["t_p"])
    with pytest.raises(ValueError):
        paired_test([1, 2], [1, 2, 3])


def test_tuning_check_flags_only_a_tuning_that_moved_neither_states_nor_predictions():
    from iclft.metrics.stats import tuning_check

    iv = lambda m: {"mean": m}  # noqa: E731
    tiny = tuning_check("IT", iv(0.05), iv(0.8), iv(0.0), "state")
    assert tiny["barely_moved"] and tiny["update_vs_icl"] == pytest.approx(0.0625)
    assert "IT barely changed the model" in tiny["warning"] and "5.0%" in tiny["warning"] and "80.0%" in tiny["warning"]
    assert not tuning_check("IT", iv(0.05), iv(0.8), iv(0.25), "state")["barely_moved"]  # predictions moved
    assert not tuning_check("IT", iv(0.4), iv(0.8), iv(0.0), "state")["barely_moved"]  # states moved
    assert not tuning_check("IT", iv(0.05), iv(float("nan")), iv(0.0), "state")["barely_moved"]  # cannot tell
