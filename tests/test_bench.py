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


def test_peers_missing_is_one_error_line(monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from iclft.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnsight" else real(name, *a))
    res = CliRunner().invoke(app, ["bench", "--peers", "--quick"])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nnsight" in lines[0]
    assert "pip install 'iclft[bench]' -c benchmarks/constraints-bench.txt" in lines[0]


def test_peers_quick_rows_agree():
    # iclft, HF, TransformerLens and nnsight compute the same things: every workload's results agree across tools
    # (TransformerLens runs eager attention, the others SDPA: float-level differences only).
    import pytest

    pytest.importorskip("transformer_lens")
    pytest.importorskip("nnsight")
    from iclft.bench_peers import TOOLS, format_peers, peak_memory, run_peers

    result = run_peers("quick", memory=False, log=lambda _: None)
    rows = result["rows"]
    assert [(r["workload"], r["tool"]) for r in rows] == [(k, t) for k, ts in TOOLS.items() for t in ts]
    for r in rows:
        assert r["cpu_s"] > 0 and math.isfinite(r["vs_iclft"]), r
        assert r["max_abs_diff"] < 1e-3, r
    assert all(r["vs_iclft"] == 1 for r in rows if r["tool"] == "iclft")
    assert "TransformerLens" in format_peers(rows)
    assert math.isfinite(peak_memory("builtin", "quick", "patching", "iclft"))  # a fresh process reports it
