"""The convergence and implicit-pattern studies' verdicts from constructed data (no model is run): the smallest
effect of interest on each test's scale, 'opposite' for a trend the other way, and the preconditions that make a
claim 'not testable' (a tuning that barely moved the model; the model at floor or ceiling) or put a caveat on it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from iclft.metrics.stats import (
    INCONCLUSIVE,
    NOT_TESTABLE,
    OPPOSITE,
    REPRODUCED,
    TOO_FEW,
    compare,
    interval,
    tuning_check,
    verdict_kind,
)
from iclft.report.convergence import factor_scales
from iclft.report.implicit import findings as implicit_findings
from iclft.studies import convergence as C
from iclft.studies import implicit_patterns as I

# ------------------------------------------------------------------------------------------------ convergence

SEEDS = 6


def _factor_rows(slope: float, noise: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """Six trials per seed whose d_icl_it follows `slope` × factor plus a little noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(SEEDS):
        x = np.linspace(0.1, 0.6, 6) + 0.01 * s
        d = 0.5 + slope * x + noise * rng.standard_normal(6)
        rows += [{"seed": s, "f": float(a), "d_icl_it": float(b)} for a, b in zip(x, d, strict=True)]
    return pd.DataFrame(rows)


def _iv(m: float) -> dict:
    return {"mean": m, "ci_low": m, "ci_high": m, "n": SEEDS}


def _tuning(name: str, update: float, changed: float) -> dict:
    return tuning_check(name, _iv(update), _iv(0.2), _iv(changed), "last-layer state")


def _conv_summary(sim_slope: float = -0.8, tuning: list | None = None, noise: float = 0.02) -> tuple[dict, np.ndarray]:
    """What convergence.headlines reads, built from per-seed numbers: a clear d_icl_it > 0, IT ≈ SL, a control
    below the task, and per-seed factor correlations (similarity: `sim_slope`, k and label correctness: none)."""
    d = np.array([0.80, 0.84, 0.78, 0.86, 0.82, 0.81])
    sl = d - np.array([0.01, -0.02, 0.03, 0.0, -0.01, 0.02])
    ctrl = d - np.array([0.35, 0.40, 0.30, 0.38, 0.33, 0.36])
    correlations = []
    for factor, slope, seed in (("demo_query_sim", sim_slope, 1), ("k", 0.0, 2), ("label_correctness", 0.0, 3)):
        rows = _factor_rows(slope, noise if factor == "demo_query_sim" else 0.2, seed).rename(columns={"f": factor})
        correlations.append(C._correlate(rows, factor, "d_icl_it"))
    summary = {"d_icl_it": {"last_layer": interval(d, "d_icl_it")},
               "paired": {"d_icl_it_vs_d_icl_sl": compare(d, sl, "d_icl_it"),
                          "d_icl_it_task_vs_control": compare(d, ctrl, "d_icl_it")},
               "correlations": correlations, "sesoi": {"difference": 0.02, "correlation": 0.1},
               "tuning": tuning if tuning is not None else [_tuning("IT", 0.3, 0.4), _tuning("SL", 0.2, 0.3)]}
    return summary, d


def _by_claim(heads: list[dict]) -> dict:
    return {h["metric"]: h for h in heads}


SIM = "per-seed Pearson r (d_icl_it, demo_query_sim), tanh of the mean Fisher z"


def test_convergence_similarity_trend_with_every_seed_negative_reads_opposite():
    summary, d = _conv_summary(sim_slope=-0.8)
    sim = summary["correlations"][0]
    assert all(r < 0 for r in sim["per_seed_pearson"]["per_seed"])
    heads = _by_claim(C.headlines(summary, d))
    h = heads[SIM]
    assert h["direction"] == +1 and h["test"]["scale"] == "fisher_z"
    assert h["test"]["diff"]["ci_high"] < 0 and h["p_holm"] < 0.05
    assert h["verdict"] == OPPOSITE and h["caveat"] is None
    # the value is tanh of the mean Fisher z, the effect that mean z: one statistic on two labelled scales
    assert h["value"]["mean"] == pytest.approx(math.tanh(h["test"]["diff"]["mean"]))
    assert heads["d_icl_it, last layer"]["verdict"] == REPRODUCED
    assert heads["d_icl_it task − control"]["verdict"] == REPRODUCED
    assert heads["d_icl_it − d_icl_sl"]["verdict"] == INCONCLUSIVE


def test_convergence_sesoi_per_test_scale_and_a_consistent_tiny_trend_is_inconclusive():
    summary, d = _conv_summary(sim_slope=-0.02, noise=0.0)  # r = -1 in every seed: atanh clipped, |z| huge
    heads = C.headlines(summary, d)
    for h in heads:
        if h["test"]["scale"] == "fisher_z":  # the correlation SESOI r = 0.1, on the z scale of the test
            assert h["sesoi"] == pytest.approx(math.atanh(0.1))
        else:
            assert h["sesoi"] == 0.02
    assert "atanh(0.1) = 0.1003 on z" in factor_scales(heads)
    # a trend consistent in every seed but weaker than r = 0.1: inconclusive, whatever its p
    summary, d = _conv_summary(sim_slope=-0.8)
    for c in summary["correlations"][:1]:
        z = np.full(SEEDS, -0.05) + np.linspace(-0.005, 0.005, SEEDS)
        c["per_seed_test"] = compare(z, 0.0, "fisher_z")
        c["per_seed_pearson"] = interval(np.tanh(z), "pearson_r")
    h = _by_claim(C.headlines(summary, d))[SIM]
    assert h["test"]["t_p"] < 1e-6 and h["test"]["diff"]["ci_high"] < 0
    assert h["verdict"] == INCONCLUSIVE
    summary["sesoi"]["correlation"] = 0.01  # below the trend's |r|: now it counts
    assert _by_claim(C.headlines(summary, d))[SIM]["verdict"] == OPPOSITE


def test_convergence_an_it_that_barely_moved_makes_every_claim_not_testable():
    it = _tuning("IT", 0.01, 0.01)  # 0.05× ICL's update and 1% of the predictions changed: both small
    assert it["barely_moved"]
    summary, d = _conv_summary(tuning=[it, _tuning("SL", 0.2, 0.3)])
    heads = C.headlines(summary, d)
    reason = ("IT barely moved the model: its update is 0.05× ICL's (under 0.1×) and it changed 1.0% of zero-shot's "
              "predictions (under 2%)")
    assert all(h["verdict"] == f"not testable: {reason}" for h in heads)
    assert all(h["caveat"] is None and h["p_holm"] != h["p_holm"] for h in heads)  # out of the Holm family


def test_convergence_an_sl_that_barely_moved_only_touches_the_it_sl_claim():
    summary, d = _conv_summary(tuning=[_tuning("IT", 0.3, 0.4), _tuning("SL", 0.01, 0.0)])
    heads = _by_claim(C.headlines(summary, d))
    assert heads["d_icl_it − d_icl_sl"]["verdict"].startswith("not testable: SL barely moved the model")
    others = [h for m, h in heads.items() if m != "d_icl_it − d_icl_sl"]
    assert all(verdict_kind(h["verdict"]) != NOT_TESTABLE and h["caveat"] is None for h in others)
    assert _by_claim(heads.values())[SIM]["verdict"] == OPPOSITE


def test_convergence_a_weak_it_puts_a_caveat_naming_the_small_measure():
    it = _tuning("IT", 0.3, 0.01)  # the state moved, the predictions did not: one measure small
    assert it["weak"] and not it["barely_moved"]
    summary, d = _conv_summary(tuning=[it, _tuning("SL", 0.2, 0.3)])
    heads = C.headlines(summary, d)
    caveat = ("IT barely moved the model: it changed 1.0% of zero-shot's predictions (under 2%), so this comparison "
              "says little")
    assert all(h["caveat"] == caveat for h in heads)
    assert _by_claim(heads)[SIM]["verdict"] == OPPOSITE  # still judged
    # SL weak too: the IT − SL claim names both
    summary["tuning"][1] = _tuning("SL", 0.01, 0.3)
    h = _by_claim(C.headlines(summary, d))["d_icl_it − d_icl_sl"]
    assert "IT barely moved" in h["caveat"] and "SL barely moved the model: its update is 0.05× ICL's" in h["caveat"]


# -------------------------------------------------------------------------------------------------- implicit

N_ITEMS = 8


def _spec(**kw) -> I.ImplicitSpec:
    return I.ImplicitSpec(**{"families": ["parity", "boolean"], "seeds": 5, "n_eval": N_ITEMS, "k_values": [0, 2],
                             "ft_sizes": [8], "ft_methods": ["full", "lora"], **kw})


def _records(right: dict, spec: I.ImplicitSpec) -> pd.DataFrame:
    """kind == acc rows: `right[setting](family, seed, variant)` -> the items answered right (indices); icl_k0 is
    the zero-shot prompt. Plus one curve row (summarise needs the kind, not its numbers)."""
    rows = []
    for f in spec.families:
        for seed in spec.seed_list():
            for v in I.VARIANTS:
                for s, fn in {**right, "icl_k0": right["zsl"]}.items():
                    ok = set(fn(f, seed, v))
                    rows += [{"kind": "acc", "setting": s, "family": f, "seed": seed, "variant": v, "item": i,
                              "correct": i in ok} for i in range(spec.n_eval)]
    rows.append({"kind": "curve", "family": spec.families[0], "seed": 0, "method": "full", "n_train": 8, "step": 0,
                 "loss": 1.0, "lr": 0.0, "acc_clean": 0.5, "acc_misleading": 0.5})
    return pd.DataFrame(rows)


def _half(offset: int):
    """About half the items right (3 to 5 of 8, varying with the seed), which ones shifted by `offset`: settings
    with different offsets answer different items, so each changes many of zero-shot's outcomes."""
    return lambda f, seed, v: [(offset + j) % N_ITEMS for j in range(3 + (seed + len(f) + len(v)) % 3)]


def _mostly(f, seed, v):
    return [i for i in range(N_ITEMS) if i != seed % N_ITEMS or seed % 2]  # 7 or 8 of 8 right


AT_CHANCE = {"zsl": _half(0), "icl_k2": _half(3), "ft_full_N8": _half(5), "ft_lora_N8": _half(6)}


def _summary(right: dict, spec: I.ImplicitSpec | None = None) -> dict:
    spec = spec or _spec()
    return I.summarise(_records(right, spec), spec, {"model": "constructed"})


def test_implicit_claims_are_not_testable_when_the_model_is_at_floor():
    s = _summary(AT_CHANCE)
    assert s["chance"]["all"] == 0.5 and s["floor"]["at_floor"] and not s["floor"]["at_ceiling"]
    acc = s["accuracy"]["all"]
    for setting in ("zsl", "icl_k2", "ft_full_N8", "ft_lora_N8"):
        for v in I.VARIANTS:
            assert acc[setting][v]["ci_low"] <= 0.5 <= acc[setting][v]["ci_high"]
    assert s["changed_vs_zsl"]["icl_k2"]["mean"] > 0.1  # ICL changed answers: the floor alone makes them untestable
    assert not s["icl_check"]["weak"] and not any(t["weak"] for t in s["tuning"].values())
    reason = s["floor"]["reason"]
    assert reason.startswith("the model is at floor on the task: zero-shot 0.49 [0.34, 0.64] / 0.51 [0.36, 0.66], ")
    assert "ICL (icl_k2) " in reason and "FT full (ft_full_N8) " in reason and "FT lora (ft_lora_N8) " in reason
    assert reason.endswith("(clean / misleading, mean over families) all contain chance 0.50 (the mean of the "
                           "families' chance levels)")
    assert len(s["headlines"]) == 6  # 2 FT methods × 2 variants + robustness × 2 (no circuits recorded)
    for h in s["headlines"]:
        assert h["verdict"] == f"not testable: {reason}" and h["caveat"] is None, h["claim"]
        assert h["sesoi"] == 0.02
    assert s["warnings"][0].startswith("The model is at floor on the task")
    assert any("<b>Floor and ceiling.</b>" in f and "at floor: every claim is not testable" in f
               for f in implicit_findings(s))


def test_implicit_claims_are_testable_when_icl_is_above_chance():
    s = _summary({**AT_CHANCE, "icl_k2": _mostly})
    assert not s["floor"]["at_floor"] and s["floor"]["reason"] is None
    assert all(verdict_kind(h["verdict"]) != NOT_TESTABLE and h["caveat"] is None for h in s["headlines"])
    beats = [h for h in s["headlines"] if "beats FT" in h["claim"]]
    assert len(beats) == 4 and all(h["verdict"] == REPRODUCED for h in beats)
    assert all(e[v]["icl_beats_ft"] for e in s["icl_vs_ft"].values() for v in I.VARIANTS)
    assert not s["warnings"]
    assert any("neither at floor nor at ceiling" in f for f in implicit_findings(s))


def _parity_only(fn):
    return lambda f, seed, v: fn(f, seed, v) if f == "parity" else []


def test_implicit_chance_of_the_mean_over_families_counts_open_ended_answers_as_zero():
    spec = _spec(families=["parity", "expression"])
    assert I.pooled_chance({"parity": 0.5, "expression": None}, spec.families) == 0.25
    # parity about half right, expression never: the mean over families sits at 0.25
    right = {s: _parity_only(fn) for s, fn in AT_CHANCE.items()}
    s = _summary(right, spec)
    assert s["chance"]["all"] is None and s["floor"]["chance"] == 0.25 and s["floor"]["at_floor"]
    assert s["floor"]["reason"].endswith("all contain chance 0.25 (the mean of the families' chance levels, "
                                         "open-ended number answers counting 0)")


def test_implicit_at_ceiling_and_a_setting_that_changed_nothing():
    everything = {s: (lambda f, seed, v: range(N_ITEMS)) for s in AT_CHANCE}
    s = _summary(everything)
    assert s["floor"]["at_ceiling"] and not s["floor"]["at_floor"]
    assert s["icl_check"]["barely_moved"] and all(t["barely_moved"] for t in s["tuning"].values())
    for h in s["headlines"]:
        assert h["verdict"].startswith("not testable: the model is at ceiling on the task: zero-shot 1.00 [")
        assert "all reach 1; ICL (icl_k2) barely changed the model's answers: it changed the correctness of 0.0% " \
               "of zero-shot's item outcomes (under 2%) and its accuracy equals zero-shot's within its interval" \
               in h["verdict"]


def test_implicit_floor_is_not_called_with_too_few_seeds():
    s = _summary(AT_CHANCE, _spec(seeds=3))
    assert not s["floor"]["at_floor"] and s["floor"]["reason"] is None
    assert all(h["verdict"] == TOO_FEW for h in s["headlines"])
    assert any("not checked (fewer than 5 seeds)" in f for f in implicit_findings(s))


def test_implicit_an_ft_that_barely_moved_or_changed_little():
    # FT full answers exactly as zero-shot: it changed nothing and kept its accuracy -> its claims not testable
    s = _summary({**AT_CHANCE, "icl_k2": _mostly, "ft_full_N8": AT_CHANCE["zsl"]})
    full = s["tuning"]["full"]
    assert full["barely_moved"] and full["weak"] and len(full["small"]) == 2
    reason = ("FT full (ft_full_N8) barely changed the model's answers: it changed the correctness of 0.0% of "
              "zero-shot's item outcomes (under 2%) and its accuracy equals zero-shot's within its interval (clean "
              "0.49 [0.34, 0.64] vs zero-shot 0.49; misleading 0.51 [0.36, 0.66] vs zero-shot 0.51)")
    for h in s["headlines"]:
        if "FT full" in h["claim"]:
            assert h["verdict"] == f"not testable: {reason}", h["claim"]
        else:
            assert verdict_kind(h["verdict"]) != NOT_TESTABLE and h["caveat"] is None, h["claim"]
    assert s["warnings"] == [full["warning"]] and "Train it harder" in full["warning"]
    # one measure small (the outcomes changed little, accuracy moved): a caveat on FT full's claims only
    full.update(barely_moved=False, small=full["small"][:1], reason="FT full (ft_full_N8) barely changed the "
                "model's answers: it changed the correctness of 1.5% of zero-shot's item outcomes (under 2%)")
    for h in I.headlines(s):
        if "FT full" in h["claim"]:
            assert verdict_kind(h["verdict"]) != NOT_TESTABLE
            assert h["caveat"] == full["reason"] + ", so this comparison says little"
        else:
            assert h["caveat"] is None


def test_implicit_icl_that_changed_nothing_makes_every_claim_not_testable():
    s = _summary({**AT_CHANCE, "icl_k2": AT_CHANCE["zsl"], "ft_full_N8": _mostly, "ft_lora_N8": _mostly})
    assert not s["floor"]["at_floor"] and s["icl_check"]["barely_moved"]
    assert all(h["verdict"].startswith("not testable: ICL (icl_k2) barely changed the model's answers")
               for h in s["headlines"])


def test_implicit_single_comparisons_use_the_smallest_effect_of_interest():
    # ICL right on one more item of 64 than FT, in every family, seed and variant: consistent (p = 0) but a
    # difference of 1/64 < 0.02 -> not "ICL beats FT"
    spec = _spec(n_eval=64)
    right = {"zsl": lambda f, seed, v: range(30), "icl_k2": lambda f, seed, v: range(33),
             "ft_full_N8": lambda f, seed, v: range(32), "ft_lora_N8": lambda f, seed, v: range(32)}
    acc = I._acc_table(_records(right, spec)[lambda r: r["kind"] == "acc"])
    e = I._icl_vs_ft(acc, spec)["full"]["clean"]
    assert e["diff"]["mean"] == pytest.approx(1 / 64) and e["paired"]["t_p"] == 0.0
    assert not e["icl_beats_ft"] and not e["ft_beats_icl"]
    assert not I._robustness(acc, spec)["full"]["icl_more_robust"]
    big = I._icl_vs_ft(acc, spec.model_copy(update={"sesoi_difference": 0.01}))["full"]["clean"]
    assert big["icl_beats_ft"]
