import json
import math
import random
from functools import partial

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from iclft import UserError, rundir
from iclft.studies.dual_view import (
    LAYER_METRICS,
    QUICK,
    SCALAR_METRICS,
    DualSpec,
    demo_pool,
    draw_demos,
    draw_validation,
    headlines,
    seed_queries,
    summarise,
    task_name,
)
from iclft.sweep import run as run_registered
from iclft.tasks.base import Example, Task
from tests.conftest import copy_run

KEYS = LAYER_METRICS + SCALAR_METRICS
run = partial(run_registered, "dual")


@pytest.fixture(scope="module")
def quick_run(quick_all, tmp_path_factory):
    """The dual study of the session's `run all --quick` (the QUICK preset), copied: a test resumes it."""
    return copy_run(quick_all / "dual", tmp_path_factory.mktemp("dual") / "run")


def test_quick_run_writes_the_run_directory(quick_run):
    out = quick_run
    for name in ("spec.yaml", "records.parquet", "summary.json", "manifest.json", "report.html",
                 "figures/per_layer.svg", "figures/accuracy.svg"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    n_layers, n_seeds = summary["n_layers"], QUICK["seeds"]
    for key in KEYS:
        entry = summary[key]
        assert {"mean", "ci_low", "ci_high", "per_seed"} <= set(entry), key
        assert len(entry["per_seed"]) == n_seeds
        for v in entry["per_seed"]:
            if key == "rec2ftp" and math.isnan(v):  # undefined when FT fixes nothing: allowed, with a warning
                continue
            lo, hi = (0.0, 1.0) if key.startswith("acc_") or key == "rec2ftp" else (-1.0, 1.0)
            assert lo <= v <= hi, (key, v)
    for key in LAYER_METRICS:
        assert len(summary["per_layer"][key]["mean"]) == n_layers
    # random baselines are centred: far from the extremes even on a few queries
    assert abs(summary["simaou_random"]["mean"]) < 0.2
    assert summary["dual_form"]["max_abs_error"] < 1e-6 and summary["dual_form"]["passed"]
    assert summary["dual_form"]["negative_control_max_abs_error"] > 1e-6
    assert summary["published"]["rec2ftp"] == [85.6, 89.4]

    records = pd.read_parquet(out / "records.parquet")
    assert len(records) == n_seeds * QUICK["queries"] * n_layers
    assert set(records["k"]) == {QUICK["k"]}
    assert records.groupby("seed")["lr"].nunique().eq(1).all()
    assert set(records["lr"]) <= set(QUICK["lr_grid"])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"] == "dual" and manifest["lr_grid"] == QUICK["lr_grid"]
    for s in map(str, range(n_seeds)):
        choice = manifest["lr_choice"][s]
        assert choice["chosen"] in QUICK["lr_grid"] and set(choice["val_acc"]) == {repr(x) for x in QUICK["lr_grid"]}
    html = (out / "report.html").read_text()
    assert "Dai et al., GPT 1.3B" in html and "models differ" in html and "Dual-form check" in html
    assert "data:image/svg+xml;base64" in html
    if summary["builtin_stand_in"]:
        assert "Stand-in model" in html

    # summary numbers follow from the records
    acc = records[records["layer"] == 0].groupby("seed")["correct_icl"].mean().to_numpy()
    np.testing.assert_allclose(summary["acc_icl"]["per_seed"], acc)
    per_seed = records.groupby(["seed", "layer"])["simaou"].mean().groupby("seed").mean().to_numpy()
    np.testing.assert_allclose(summary["simaou"]["per_seed"], per_seed)


def test_same_seed_same_numbers_and_resume(quick_run, tmp_path):
    first = json.loads((quick_run / "summary.json").read_text())
    again = json.loads((run(DualSpec(**QUICK), tmp_path / "again") / "summary.json").read_text())
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    # rerunning into the finished directory computes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (quick_run / "shards").iterdir()}
    run(DualSpec(**QUICK), quick_run)
    assert {p.name: p.stat().st_mtime_ns for p in (quick_run / "shards").iterdir()} == before
    # a run that lost a shard, its records and its summary recomputes that seed and summarises it with the
    # resumed one: the same summary as the uninterrupted run
    rundir.drop_shard(quick_run, "seed1")
    (quick_run / "records.parquet").unlink()
    (quick_run / "summary.json").unlink()
    run(DualSpec(**QUICK), quick_run)
    assert rundir.shard_state(quick_run, "seed1") == "done"
    resumed = json.loads((quick_run / "summary.json").read_text())
    assert json.dumps(resumed, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_bad_inputs_leave_nothing_behind(tmp_path):
    for bad in (dict(lr_grid=[]), dict(lr_grid=[-1.0]), dict(lr_grid=[float("inf")])):
        with pytest.raises(ValidationError):
            DualSpec(**{**QUICK, **bad})
    for bad in (dict(queries=10**6), dict(val_size=10**7)):
        with pytest.raises(UserError):
            run(DualSpec(**{**QUICK, **bad}), tmp_path / "bad")
        assert not (tmp_path / "bad").exists()


def _task(n_pos=30, n_neg=60):
    train = [Example(f"good {i}", "positive") for i in range(n_pos)] + [Example(f"bad {i}", "negative")
                                                                         for i in range(n_neg)]
    test = [Example("good 0", "positive"), Example("bad x", "negative")]
    return Task(name="t", train=train, test=test, instruction="", label_words=["negative", "positive"])


def test_balanced_demos_and_disjoint_validation():
    task = _task()
    pool = demo_pool(task)
    assert all(e.input != "good 0" for e in pool)  # a test query (any seed may measure it) is never a demonstration
    rng = random.Random(0)
    demos = draw_demos(pool, 9, task.label_words, "balanced", rng)
    counts = sorted(sum(d.label == w for d in demos) for w in task.label_words)
    assert counts == [4, 5] and len({d.input for d in demos}) == 9
    val = draw_validation(pool, demos, 10, task.label_words, "balanced", rng)
    assert not {v.input for v in val} & {d.input for d in demos}
    assert sum(v.label == "positive" for v in val) == 5
    again = draw_demos(pool, 9, task.label_words, "balanced", random.Random(0))
    assert [d.input for d in again] == [d.input for d in demos]  # seeded order


def test_each_seed_draws_its_own_queries():
    pool = [Example(f"q{i}", "positive" if i % 2 else "negative") for i in range(200)]
    spec = DualSpec(queries=20)
    a, b = seed_queries(spec, pool, 0), seed_queries(spec, pool, 1)
    assert len(a) == len(set(e.input for e in a)) == 20 and a != b  # seeds differ: intervals cover the queries
    assert seed_queries(spec, pool, 0) == a  # the seed's own RNG: the same draw every time
    assert seed_queries(DualSpec(queries=None), pool, 3) == pool


def test_auto_task_is_a_new_pairing_on_the_builtin_model_only():
    assert task_name(DualSpec()) == "sentiment/apple-tiger"
    assert task_name(DualSpec(model="some/hub-model")) == "sentiment"
    assert task_name(DualSpec(task="sentiment")) == "sentiment"


def _records(correct: dict[int, list[tuple[int, int, int]]]) -> pd.DataFrame:
    """Constructed records: per seed, per query (zsl, icl, ft) correctness; one layer, constant layer metrics."""
    rows = []
    for seed, trials in correct.items():
        for q, (z, i, f) in enumerate(trials):
            rows.append({"seed": seed, "query": q, "layer": 0, "k": 4, "lr": 0.1, "gold": 0,
                         **{f"pred_{s}": 0 if c else 1 for s, c in (("zsl", z), ("icl", i), ("ft", f))},
                         **{f"correct_{s}": bool(c) for s, c in (("zsl", z), ("icl", i), ("ft", f))},
                         **{m: 0.1 * (seed + 1) for m in LAYER_METRICS},
                         "lr_search": json.dumps({"chosen": 0.1})})
    return pd.DataFrame(rows)


def test_rec2ftp_baseline_by_hand_and_its_verdicts():
    # per seed: 10 F->T queries (zsl wrong, ft right), ICL right on 9; 4 zero-shot errors FT-KV leaves, ICL right
    # on 1: Rec2FTP 9/10, baseline 1/4. Every seed the same: identical seeds.
    trials = [(0, 1, 1)] * 9 + [(0, 0, 1), (0, 1, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (1, 1, 1), (1, 1, 1)]
    recs = _records({s: trials for s in range(6)})
    spec = DualSpec(min_f_to_t=10)
    summary = summarise(recs, spec, {"model": "toy"})
    assert summary["rec2ftp"]["mean"] == pytest.approx(0.9)
    assert summary["rec2ftp_baseline"]["mean"] == pytest.approx(0.25)
    assert summary["rec2ftp_baseline_trials"] == [4] * 6 and summary["f_to_t_total"] == 60
    d = summary["paired"]["rec2ftp_vs_baseline"]["diff"]
    assert d["mean"] == pytest.approx(0.65) and d["sd"] == 0
    heads = {h["metric"].split(" (")[0].split(",")[0]: h for h in summary["headlines"]}
    # identical seeds: decided from the pooled interval (60 F->T queries, 54 recovered), not "too few seeds"
    assert heads["Rec2FTP"]["verdict"] == "reproduced" and heads["Rec2FTP"]["value"]["ci_low"] > 0.5
    assert heads["Rec2FTP − baseline"]["verdict"] == "reproduced"
    few = summarise(recs, DualSpec(min_f_to_t=100), {"model": "toy"})
    assert all(h["verdict"].startswith("not testable: too few F→T queries (60 < 100")
               for h in few["headlines"][:2])
    assert not few["headlines"][2]["verdict"].startswith("not testable")


def test_an_ft_kv_that_barely_moved_makes_every_claim_not_testable():
    recs = _records({s: [(0, 1, 1)] * 12 for s in range(5)})
    summary = summarise(recs, DualSpec(), {"model": "toy"})
    t = summary["tuning"][0]
    t.update(barely_moved=True, weak=True, reason="FT-KV barely moved the model: x and y")
    assert all(h["verdict"] == "not testable: FT-KV barely moved the model: x and y" for h in headlines(summary))
    t.update(barely_moved=False, weak=True, reason="FT-KV barely moved the model: x")
    hs = headlines(summary)
    assert all(not h["verdict"].startswith("not testable") and "barely moved" in h["caveat"] for h in hs)
