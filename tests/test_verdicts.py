"""The five verdicts, each reached from constructed per-seed data, the smallest effect of interest, levels read
off pooled intervals (seeds that all agree), and the tuning check that turns into caveats and 'not testable'."""

import numpy as np
import pytest

from iclft.metrics.stats import (
    INCONCLUSIVE,
    MIN_SEEDS,
    NOT_TESTABLE,
    OPPOSITE,
    REPRODUCED,
    TOO_FEW,
    VERDICTS,
    compare,
    headline,
    interval,
    judge,
    level_verdict,
    tuning_check,
    verdict,
    verdict_kind,
)
from iclft.studies.common import RunSpec

UP = [0.31, 0.28, 0.35, 0.30, 0.33, 0.29, 0.32]  # clearly above 0
NOISE = [0.05, -0.04, 0.02, -0.06, 0.01, 0.03, -0.02]  # mean -0.0014: spans 0


def test_each_verdict_word_from_constructed_seeds():
    assert verdict(compare(UP, 0.0, "simaou"), None, +1, sesoi=0.02) == REPRODUCED
    assert verdict(compare(UP, 0.0, "simaou"), None, -1, sesoi=0.02) == OPPOSITE  # significant, the other way
    assert verdict(compare(NOISE, 0.0, "simaou"), None, +1, sesoi=0.02) == INCONCLUSIVE
    assert verdict(compare(UP[: MIN_SEEDS - 1], 0.0, "simaou"), None, +1) == TOO_FEW
    judged = judge([headline("c", "m", interval(UP, "simaou"), "p", compare(UP, 0.0, "simaou"),
                             untestable="the model is at floor on the task")])
    assert judged[0]["verdict"] == "not testable: the model is at floor on the task"
    assert verdict_kind(judged[0]["verdict"]) == NOT_TESTABLE
    assert {verdict_kind(v) for v in (REPRODUCED, OPPOSITE, INCONCLUSIVE, judged[0]["verdict"], TOO_FEW)} \
        == set(VERDICTS)


def test_a_consistent_effect_below_the_smallest_effect_of_interest_is_inconclusive():
    tiny = [1e-4 + 1e-6 * i for i in range(8)]  # consistent across seeds: p ~ 0
    test = compare(tiny, 0.0, "simaou")
    assert test["t_p"] < 1e-6 and test["diff"]["ci_low"] > 0
    assert verdict(test, None, +1, sesoi=0.0) == REPRODUCED
    assert verdict(test, None, +1, sesoi=0.02) == INCONCLUSIVE
    assert verdict(compare([-x for x in tiny], 0.0, "simaou"), None, +1, sesoi=0.02) == INCONCLUSIVE
    # just at the SESOI counts (the effect "reaches" it)
    at = [0.02 + 0.001 * (-1) ** i for i in range(8)]
    assert verdict(compare(at, 0.0, "simaou"), None, +1, sesoi=0.02) == REPRODUCED


def test_holm_can_turn_a_verdict_inconclusive_and_untestable_claims_leave_the_family():
    weak = [0.02, 0.05, -0.01, 0.04, 0.03, 0.01, 0.06]  # alone p ~ 0.02
    t = compare(weak, 0.0, "simaou")
    assert 0.01 < t["t_p"] < 0.05 and verdict(t, None, +1, 0.0) == REPRODUCED
    heads = [headline(f"c{i}", "m", interval(weak, "simaou"), "p", t) for i in range(3)]
    assert [h["verdict"] for h in judge(heads)] == [INCONCLUSIVE] * 3  # 3 x p > .05 after Holm
    heads = [headline("c0", "m", interval(weak, "simaou"), "p", t),
             *[headline(f"c{i}", "m", interval(weak, "simaou"), "p", t, untestable="why") for i in (1, 2)]]
    judged = judge(heads)
    assert judged[0]["p_holm"] == pytest.approx(t["t_p"]) and judged[0]["verdict"] == REPRODUCED
    assert all(h["verdict"] == "not testable: why" and h["p_holm"] != h["p_holm"] for h in judged[1:])


def test_a_level_is_read_off_the_pooled_interval_even_when_every_seed_agrees():
    same = interval([1.0] * 5, "rec2ftp", trials=[20] * 5)  # 20/20 in every seed: zero between-seed variance
    assert same["sd"] == 0 and same["ci_low"] > 0.8
    assert level_verdict(same, 0.5, sesoi=0.02) == REPRODUCED
    low = interval([0.1] * 5, "rec2ftp", trials=[20] * 5)
    assert level_verdict(low, 0.5, sesoi=0.02) == OPPOSITE
    mid = interval([0.4, 0.6, 0.5, 0.55, 0.45], "rec2ftp", trials=[20] * 5)
    assert level_verdict(mid, 0.5, sesoi=0.02) == INCONCLUSIVE
    assert level_verdict(interval([1.0] * 3, "rec2ftp", trials=[20] * 3), 0.5) == TOO_FEW
    # a difference whose seeds all agree exactly is decided by its (degenerate) interval and p
    assert verdict(compare([0.3] * 6, [0.1] * 6, "acc"), None, +1, sesoi=0.02) == REPRODUCED
    assert verdict(compare([0.3] * 6, [0.3] * 6, "acc"), None, +1, sesoi=0.02) == INCONCLUSIVE


def test_sesoi_defaults_by_kind_of_quantity():
    spec = RunSpec()
    assert spec.sesoi("d_icl_it") == spec.sesoi("acc_diff") == spec.sesoi("rec2ftp") == 0.02
    assert spec.sesoi("pearson_r") == spec.sesoi("kendall") == 0.1
    assert RunSpec(sesoi_difference=0.05).sesoi("simaou") == 0.05


def iv(m):
    return {"mean": m, "ci_low": m, "ci_high": m, "n": 5}


@pytest.mark.parametrize("update,changed,small,weak,barely", [
    (0.005, 0.01, 2, True, True),  # 0.05x ICL's update and 1 % changed: not testable
    (0.005, 0.25, 1, True, False),  # predictions moved, states did not: a caveat
    (0.017, 0.01, 1, True, False),  # the dual default run's FT-KV: 0.17x ICL's update, 1 % changed: a caveat
    (0.05, 0.25, 0, False, False),
])
def test_tuning_check_caveat_when_either_measure_is_small_untestable_when_both(update, changed, small, weak, barely):
    t = tuning_check("FT-KV", iv(update), iv(0.1), iv(changed), "attention output")
    assert (len(t["small"]), t["weak"], t["barely_moved"]) == (small, weak, barely)
    assert (t["warning"] is not None) == weak and (t["reason"] is not None) == weak
    assert t["update_vs_icl"] == pytest.approx(update / 0.1)
    if barely:
        assert "0.05× ICL's" in t["reason"] and "1.0% of zero-shot's predictions" in t["reason"]


def test_a_correlation_the_other_way_is_opposite():
    rs = np.array([-0.30, -0.35, -0.28, -0.40, -0.33, -0.31])
    z = np.arctanh(rs)
    t = compare(z, 0.0, "fisher_z")
    assert verdict(t, None, +1, sesoi=0.1) == OPPOSITE
    assert verdict(t, None, -1, sesoi=0.1) == REPRODUCED


def test_a_correlation_tested_on_the_z_scale_gets_the_correlation_sesoi_on_that_scale():
    assert RunSpec().sesoi("fisher_z") == pytest.approx(np.arctanh(0.1))
