"""Smoke test of `iclft bench --quick`: every row is there, ratios are finite and positive, the fast ways agree
with the slow ones. No timing asserts (the machine is shared; only ratios measured side by side count)."""

import math

from iclft.bench import PRESETS, DeepSpec, Sizes, format_table, run_bench

TINY = Sizes(capture_prompts=4, capture_k=1, capture_batch=2, prefix_queries=3, prefix_k=2, prefix_batch=2,
             adapter_trials=2, adapter_steps=2, patch_pairs_per_family=1, patch_top=5, repeats=1, slow_repeats=1)
NAMES = ("capture vs HF forward", "prefix KV vs full", "attribution vs exh.", "stacked vs seq. LoRA")


def test_quick_bench_rows():
    assert set(PRESETS) >= {"default", "quick"}
    result = run_bench("quick", sizes={"builtin": TINY, "deep": TINY,
                                       "deep_spec": DeepSpec(layers=3, heads=4, hidden=32, intermediate=64)},
                       log=lambda _: None)
    rows = result["rows"]
    models = ["builtin", "random-3Lx4H"]
    assert [(r["name"], r["model"]) for r in rows] == [(n, m) for m in models for n in NAMES]
    for r in rows:  # every comparison is measured: a failed one has no ratio and says FAILED
        assert "status" not in r, r["status"]
        for key in ("baseline_s", "fast_s", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["name"], r["model"], key, r[key])
        if "max_abs_diff" in r:
            assert r["max_abs_diff"] < 1e-3, r
    by = {(r["name"], r["model"]): r for r in rows}
    for m in models:
        assert "max_abs_diff" in by["capture vs HF forward", m] and "max_abs_diff" in by["prefix KV vs full", m]
        assert math.isfinite(by["capture vs HF forward", m]["mem_ratio"])
        p = by["attribution vs exh.", m]
        n_layers = result["models"][m]["n_layers"]
        assert p["components"] % n_layers == 0 and (m == "builtin" or p["components"] == 3 * (4 + 1))  # heads + MLP
        assert -1 <= p["spearman_all"] <= 1 and -1 <= p["spearman_top"] <= 1
    table = format_table(rows)
    assert all(n in table for n in NAMES) and "random-3Lx4H" in table
