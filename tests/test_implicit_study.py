"""The implicit-pattern study end to end (quick preset on the built-in model), its greedy decoder, input
checks, resume and determinism."""

from __future__ import annotations

import json
import math
from functools import partial

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from iclft import UserError, rundir
from iclft.capture.decode import greedy_decode, last_logits
from iclft.models.toy import tiny_model
from iclft.studies.common import load_spec, parse_sets
from iclft.studies.implicit_patterns import PAPER, QUICK, ImplicitSpec, run_unit
from iclft.sweep import run as run_registered
from tests.conftest import copy_run

VOCAB = 40
run = partial(run_registered, "implicit")


def _slow_greedy(model, prompt, n, stop):
    ids = list(prompt)
    out = []
    for _ in range(n):
        with torch.no_grad():
            t = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if t in stop:
            break
        out.append(t)
        ids.append(t)
    return out


def test_greedy_decode_batched_equals_one_by_one():
    model = tiny_model("llama", VOCAB, seed=2)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    stop = {7, 11}
    got = greedy_decode(model, prompts, pad_id=0, max_new_tokens=5, stop_ids=stop, batch_size=4)
    assert got == [_slow_greedy(model, p, 5, stop) for p in prompts]
    ll = last_logits(model, prompts, pad_id=0, batch_size=3)
    for p, row in zip(prompts, ll, strict=True):
        torch.testing.assert_close(row, model(input_ids=torch.tensor([p])).logits[0, -1].detach(), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def quick_run(quick_all, tmp_path_factory):
    """The implicit study of the session's `run all --quick` (the QUICK preset), copied: a test resumes it."""
    return ImplicitSpec(**QUICK), copy_run(quick_all / "implicit", tmp_path_factory.mktemp("implicit") / "run")


def _ci_ok(d):
    return set(d) >= {"mean", "ci_low", "ci_high"} and (math.isnan(d["mean"]) or 0.0 <= d["mean"] <= 1.0)


def test_quick_run_files_and_summary(quick_run):
    spec, out = quick_run
    for name in ("spec.yaml", "manifest.json", "records.parquet", "summary.json", "report.html"):
        assert (out / name).is_file(), name
    figs = {p.name for p in (out / "figures").glob("*.svg")}
    assert {"icl_vs_ft_curves.svg", "ft_steps.svg", "robustness_scatter.svg", "circuit_heatmaps.svg"} <= figs
    s = json.loads((out / "summary.json").read_text())
    for key in ("accuracy", "icl_curve", "ft_curve", "circuit_shift", "patching_agreement", "icl_vs_ft"):
        assert key in s
    fams = spec.families
    settings = ["zsl", "icl_k0", "icl_k2", "ft_full_N16", "ft_lora_N16"]
    for f in [*fams, "all"]:
        assert set(s["accuracy"][f]) == set(settings)
        for cell in s["accuracy"][f].values():
            assert set(cell) == {"clean", "misleading"}
            assert all(_ci_ok(cell[v]) and cell[v]["n"] == spec.seeds for v in cell)
        assert s["icl_curve"][f]["k"] == spec.k_values and len(s["icl_curve"][f]["misleading"]) == 2
        assert set(s["ft_curve"][f]) == {"full", "lora"}
    for f in fams:
        for x in ("icl", "ft"):
            for m in ("cosine", "jaccard"):
                d = s["circuit_shift"][f][x][m]
                assert d["n"] == spec.seeds and -1e-9 <= d["mean"] <= 2.0 + 1e-9
    ag = s["patching_agreement"]
    assert -1.0 <= ag["spearman"]["mean"] <= 1.0 and ag["speedup"]["mean"] > 0
    # ZSL is the k = 0 prompt: identical numbers
    assert s["accuracy"]["all"]["zsl"] == s["accuracy"]["all"]["icl_k0"]
    html = (out / "report.html").read_text()
    assert "beats FT" in html and "Headline findings" in html and "data:image/svg+xml;base64" in html
    assert "smallest effect of interest 0.02" in html and "<b>Floor and ceiling.</b>" in html
    assert all(h["sesoi"] == 0.02 for h in s["headlines"])
    assert s["floor"]["reason"] is None  # 2 seeds: floor and ceiling are not called
    rec = pd.read_parquet(out / "records.parquet")
    assert set(rec["kind"]) == {"acc", "curve", "effect"}
    steps = rec[rec["kind"] == "curve"]["step"].unique().tolist()
    assert sorted(steps) == [0, 2, 4]


# What a resumed run recomputes from booleans, so it must equal the first run's exactly.
ACCURACY_KEYS = ("accuracy", "icl_curve", "ft_curve", "changed_vs_zsl", "icl_vs_ft", "robustness")


def test_resume_gives_the_same_summary(quick_run):
    """A run resumed after losing some shards (and its records and summary) recomputes those units and summarises
    resumed and recomputed shards together: the same records and summary as the uninterrupted run."""
    spec, out = quick_run
    first = json.loads((out / "summary.json").read_text())
    records = pd.read_parquet(out / "records.parquet")
    lost = ["parity__s1__icl", "expression__s0__ft_lora"]  # circuits' timings (speedup) differ per run: kept
    for unit in lost:
        rundir.drop_shard(out, unit)
    (out / "records.parquet").unlink()
    (out / "summary.json").unlink()
    run(spec, out)
    assert all(rundir.shard_state(out, unit) == "done" for unit in lost)
    again = pd.read_parquet(out / "records.parquet")
    cols = [c for c in records.columns if not c.startswith("seconds")]
    pd.testing.assert_frame_equal(again[cols], records[cols])
    resumed = json.loads((out / "summary.json").read_text())
    for key in ACCURACY_KEYS:
        assert json.dumps(resumed[key], sort_keys=True) == json.dumps(first[key], sort_keys=True), key


def test_units_are_deterministic():
    from iclft.models.load import load

    spec = ImplicitSpec(**QUICK)
    loaded = load("builtin")
    for part in ("icl", "ft_lora", "circuits"):
        a = run_unit(spec, loaded, "parity", 0, part, 16)
        b = run_unit(spec, loaded, "parity", 0, part, 16)
        cols = [c for c in a.columns if not c.startswith("seconds")]
        pd.testing.assert_frame_equal(a[cols], b[cols])


def test_bad_spec_is_an_input_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "bad"
    for bad in ({"families": ["nope"]}, {"families": []}, {"circuit_method": "guess"}, {"ft_methods": ["half"]}):
        with pytest.raises(ValidationError):
            ImplicitSpec(**{**QUICK, **bad})
    with pytest.raises(UserError, match="unknown rule"):
        run(ImplicitSpec(**{**QUICK, "rules": {"parity": "nope"}}), out)
    with pytest.raises(UserError, match="curve_eval"):
        run(ImplicitSpec(**{**QUICK, "curve_eval": 99}), out)
    assert not out.exists()


def test_more_items_than_the_size_has_is_an_input_error(tmp_path):
    # the paper's N on the built-in model's small items used to end in a RuntimeError traceback (the paper preset
    # now asks for the paper's size)
    with pytest.raises(UserError, match=r"could not draw 1024 distinct .* \(size small\): ask for fewer items"):
        run(ImplicitSpec(**{**PAPER, "size": "auto", "model": "builtin"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,method", [("full", "lora"), ("lora", "full")])
def test_the_method_of_each_finetune_spec_is_fixed(field, method):
    # `--set full.method=lora` used to run LoRA and report it as ft_full_*
    with pytest.raises(UserError, match=rf"^invalid spec field '{field}\.method': Input should be '{field}'"):
        load_spec(ImplicitSpec, None, parse_sets([f"{field}.method={method}"]), preset=QUICK)
    assert load_spec(ImplicitSpec, None, parse_sets([f"{field}.lr=0.5"]), preset=QUICK).model_dump()[field] == {
        **QUICK[field].model_dump(), "lr": 0.5}
