"""The implicit-pattern report (issue 15): separate ICL / FT accuracy panels, every figure as PNG and SVG with
labelled axes, the small-run banner, the robustness headline and the 'did FT change anything' measure, on a tiny
run of the study; the robustness effect and the change measure by hand on hand-made records."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pandas as pd
import pytest

from iclft.metrics.stats import TINY_CHANGED
from iclft.report.implicit import write_report
from iclft.studies.implicit_patterns import (
    ImplicitSpec,
    _acc_table,
    _changed_vs_zsl,
    _robustness,
    size_name,
    summarise,
)
from iclft.sweep import run as run_registered
from iclft.tasks.implicit import SIZE_SMALL
from iclft.tuning.finetune import FinetuneSpec

run = partial(run_registered, "implicit")

# One family, two seeds, four items per variant; two k > 0 and two N, so every curve is a line, not a point.
TINY = dict(
    preset="quick", seeds=2, families=["parity"], n_eval=4, k_values=[0, 1, 2], ft_sizes=[4, 8],
    full=FinetuneSpec(method="full", lr=3e-4, steps=2, batch_size=4, warmup_steps=1, eval_every=1),
    lora=FinetuneSpec(method="lora", lr=3e-3, steps=2, batch_size=4, warmup_steps=1, eval_every=1),
    curve_eval=2, circuit_pairs=2, circuit_k=1, top_k=2,
)
FIGURES = ("icl_vs_ft_curves", "ft_steps", "robustness_scatter", "changed_vs_zsl", "circuit_heatmaps",
           "patching_agreement")
BANNER = 'class="banner"'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("implicit_report") / "run"
    spec = ImplicitSpec(**TINY)
    run(spec, out)  # renders the report: `save` raises on any unlabelled axis or colour bar
    return spec, out


def test_every_figure_as_svg(tiny_run):
    _, out = tiny_run
    for name in FIGURES:  # PNGs only on demand (iclft report --png)
        assert (out / "figures" / f"{name}.svg").is_file(), name
    svg = (out / "figures" / "icl_vs_ft_curves.svg").read_text()
    assert "k demonstrations" in svg and "N fine-tuning samples" in svg  # ICL and FT on separate axes


def test_summary_has_robustness_change_and_chance(tiny_run):
    spec, out = tiny_run
    s = json.loads((out / "summary.json").read_text())
    assert s["chance"] == {"parity": 0.5, "all": 0.5}
    assert set(s["robustness"]) == set(spec.ft_methods)
    for m, r in s["robustness"].items():
        assert r["icl"] == "icl_k2" and r["ft"] == f"ft_{m}_N8"
        assert r["effect"]["n"] == spec.seeds and -2 <= r["effect"]["mean"] <= 2
    assert set(s["changed_vs_zsl"]) == {"icl_k2", "ft_full_N8", "ft_lora_N8"}
    # size `auto` on the built-in model: the small items it was pretrained on, stated in the summary and report
    assert s["size"] == "small" and s["sizes"]["parity"] == SIZE_SMALL["parity"]
    assert "head_len=" + str(SIZE_SMALL["parity"]["head_len"]) in (out / "report.html").read_text()
    for d in s["changed_vs_zsl"].values():
        assert d["method"] == "wilson" and 0 <= d["ci_low"] <= d["mean"] <= d["ci_high"] <= 1
    assert isinstance(s["warnings"], list)
    assert set(s["tuning"]) == set(spec.ft_methods)
    assert s["circuits"]["ft_setting"] == "ft_full_N8"


def test_size_auto_is_small_only_on_the_builtin_model():
    assert size_name(ImplicitSpec(model="builtin")) == "small"
    assert size_name(ImplicitSpec(model="gpt2")) == "paper"
    assert size_name(ImplicitSpec(model="/some/dir")) == "paper"
    assert size_name(ImplicitSpec(model="builtin", size="paper")) == "paper"
    assert size_name(ImplicitSpec(model="gpt2", size="small")) == "small"


def test_robustness_headline_has_a_value(tiny_run):
    _, out = tiny_run
    heads = json.loads((out / "summary.json").read_text())["headlines"]
    claims = [h["claim"] for h in heads]
    # the earlier headlines keep their places, the robustness ones come last
    assert "beats FT full" in claims[0] and "circuit" in claims[4]
    rob = [h for h in heads if "loses less accuracy" in h["claim"]]
    assert len(rob) == 2
    for h in rob:
        assert h["value"]["mean"] == h["value"]["mean"] and h["value"]["n"] == 2
        assert h["test"]["scale"] == "acc_diff" and h["sesoi"] == 0.02
        # two seeds: too few to tell, unless a precondition already failed (a 2-step FT that changed nothing)
        assert h["verdict"] == "too few seeds to tell" or h["verdict"].startswith("not testable: FT "), h["verdict"]
    html = (out / "report.html").read_text()
    assert "loses less accuracy than FT full" in html and "Did fine-tuning (and ICL) change anything?" in html


def test_banner_first_for_a_quick_run_and_absent_for_a_full_one(tiny_run):
    spec, out = tiny_run
    html = (out / "report.html").read_text()
    body = html.split("<body>", 1)[1]
    assert body.split("</h1>", 1)[1].startswith(f"<div {BANNER}>Quick run: preset quick, 2 seeds × 4 items per family")
    records = pd.read_parquet(out / "records.parquet")
    summary = json.loads((out / "summary.json").read_text())
    info = json.loads((out / "manifest.json").read_text())["model"]
    big = spec.model_copy(update={"preset": "default"})
    write_report(out, records, {**summary, "n_seeds": 5}, big, info)
    assert BANNER not in (out / "report.html").read_text()
    write_report(out, records, summary, big, info)  # default preset, 2 seeds: still a small run
    assert "Small run: preset default" in (out / "report.html").read_text()
    # the study's warnings sit at the top, right after the banner, before any number
    write_report(out, records, {**summary, "warnings": ["FT lora (N = 8) barely changed the model: test"]}, spec, info)
    html = (out / "report.html").read_text()
    assert html.index(BANNER) < html.index('class="warn">FT lora (N = 8) barely changed') < html.index("Headline")


# ------------------------------------------------------------------------------------------ by hand

def _records(correct: dict) -> pd.DataFrame:
    """kind == acc rows from {(setting, family, seed, variant): [correct per item]}."""
    rows = [{"kind": "acc", "setting": s, "family": f, "seed": seed, "variant": v, "item": i, "correct": bool(c)}
            for (s, f, seed, v), cs in correct.items() for i, c in enumerate(cs)]
    return pd.DataFrame(rows)


def _hand_spec(**kw) -> ImplicitSpec:
    return ImplicitSpec(**{"families": ["parity", "boolean"], "seeds": 2, "n_eval": 4, "k_values": [0, 2],
                           "ft_sizes": [8], "ft_methods": ["full"], **kw})


def test_robustness_effect_by_hand():
    c = {}
    # per (setting, seed): clean and misleading accuracy of family parity and family boolean
    acc = {("icl_k2", 0): ((1.00, 0.50), (0.75, 0.75)), ("icl_k2", 1): ((0.75, 0.75), (0.50, 0.50)),
           ("ft_full_N8", 0): ((1.00, 0.00), (1.00, 0.25)), ("ft_full_N8", 1): ((0.50, 0.25), (1.00, 0.50))}
    for (s, seed), fams in acc.items():
        for f, (clean, mis) in zip(("parity", "boolean"), fams, strict=True):
            c[(s, f, seed, "clean")] = [i < 4 * clean for i in range(4)]
            c[(s, f, seed, "misleading")] = [i < 4 * mis for i in range(4)]
    r = _robustness(_acc_table(_records(c)), _hand_spec())["full"]
    # per seed, the mean over families of clean − misleading
    drop_icl = [((1.00 - 0.50) + (0.75 - 0.75)) / 2, ((0.75 - 0.75) + (0.50 - 0.50)) / 2]  # [0.25, 0.0]
    drop_ft = [((1.00 - 0.00) + (1.00 - 0.25)) / 2, ((0.50 - 0.25) + (1.00 - 0.50)) / 2]  # [0.875, 0.375]
    want = [0.625, 0.375]  # drop_FT − drop_ICL per seed
    assert [f - i for f, i in zip(drop_ft, drop_icl, strict=True)] == pytest.approx(want)
    assert r["drop_icl"]["per_seed"] == pytest.approx(drop_icl)
    assert r["drop_ft"]["per_seed"] == pytest.approx(drop_ft)
    assert r["effect"]["per_seed"] == pytest.approx(want)
    assert r["effect"]["mean"] == pytest.approx(0.5)
    half = 12.706204736174707 * np.std(want, ddof=1) / math.sqrt(2)  # t(0.975, 1 df) · sd / √n ≈ 1.588
    assert r["effect"]["ci_low"] == pytest.approx(0.5 - half)
    assert r["effect"]["ci_high"] == 2.0  # a difference of two accuracy drops lies in [−2, 2]
    assert r["paired"]["scale"] == "acc_diff" and r["paired"]["n"] == 2
    assert not r["icl_more_robust"]


def _flat(setting, seeds=(0, 1), fams=("parity", "boolean"), flip=None):
    """Every item right on clean and wrong on misleading; `flip`: (family, seed, variant, item) made the other."""
    out = {}
    for seed in seeds:
        for f in fams:
            for v in ("clean", "misleading"):
                cs = [v == "clean"] * 4
                for ff, ss, vv, i in flip or []:
                    if (ff, ss, vv) == (f, seed, v):
                        cs[i] = not cs[i]
                out[(setting, f, seed, v)] = cs
    return out


def test_changed_vs_zsl_and_the_barely_changed_warning_by_hand():
    spec = _hand_spec()
    flips = [("parity", 0, "clean", 0), ("boolean", 1, "misleading", 3), ("boolean", 1, "clean", 1)]
    c = {**_flat("zsl"), **_flat("icl_k0"), **_flat("icl_k2", flip=flips),
         **_flat("ft_full_N8")}  # FT left every item as zero-shot had it
    records = _records(c)
    ch = _changed_vs_zsl(records, spec)
    assert set(ch) == {"icl_k2", "ft_full_N8"}
    assert ch["icl_k2"]["per_seed"] == pytest.approx([1 / 16, 2 / 16])  # 16 items per seed: 2 families × 2 × 4
    assert ch["icl_k2"]["mean"] == pytest.approx(3 / 32)
    assert ch["ft_full_N8"]["mean"] == 0.0 and ch["ft_full_N8"]["method"] == "wilson"
    # summarise needs the curve and effect kinds only through their own summaries: give it an empty curve
    curve = pd.DataFrame([{"kind": "curve", "family": "parity", "seed": 0, "method": "full", "n_train": 8,
                           "step": 0, "loss": 1.0, "lr": 0.0, "acc_clean": 1.0, "acc_misleading": 0.0}])
    s = summarise(pd.concat([records, curve], ignore_index=True), spec, {"model": "hand"})
    assert s["changed_vs_zsl"]["ft_full_N8"]["mean"] == 0.0 < TINY_CHANGED
    assert s["tuning"]["full"]["barely_moved"] and s["tuning"]["full"]["acc_equals_zsl"]
    assert len(s["warnings"]) == 1 and "FT full (ft_full_N8) barely changed the model's answers" in s["warnings"][0]
    # both measures small (no item changed, accuracy as zero-shot's): every claim with FT full is not testable
    for h in s["headlines"]:
        assert h["verdict"].startswith("not testable: FT full (ft_full_N8) barely changed the model's answers: it "
                                       "changed the correctness of 0.0% of zero-shot's item outcomes"), h["claim"]
        assert h["caveat"] is None
    assert s["chance"] == {"parity": 0.5, "boolean": 0.5, "all": 0.5}
