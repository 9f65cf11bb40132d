"""End to end on the built-in model with the quick preset: files, numbers, resume after a kill, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from iclft.cli import app
from iclft.metrics.similarity import CONVERGENCE_KEYS
from tests.conftest import copy_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CMD = [sys.executable, "-m", "iclft", "run", "convergence", "--quick"]


@pytest.fixture(scope="module")
def quick_run(quick_all, tmp_path_factory):
    """The convergence study of the session's `run all --quick`, copied: these tests edit and re-render it."""
    return copy_run(quick_all / "convergence", tmp_path_factory.mktemp("conv") / "run")


def test_run_directory_contract(quick_run):
    out = quick_run
    for name in ("spec.yaml", "manifest.json", "records.parquet", "summary.json", "report.html"):
        assert (out / name).is_file(), name
    figs = sorted(p.name for p in (out / "figures").glob("*.svg"))
    assert figs == ["convergence_vs_similarity.svg", "label_correctness.svg", "similarity_by_layer.svg",
                    "trend_over_k.svg"]
    html = (out / "report.html").read_text()
    assert "data:image/svg+xml;base64," in html and "Findings" in html
    assert 'src="figures' not in html  # self-contained
    # one statistic per factor claim, its scales labelled: r (tanh of the mean z), the effect on z, the SESOI on z
    assert "tanh of the seeds' mean Fisher z" in html and "effect (Fisher z)" in html
    assert "smallest effect of interest r = 0.1 is atanh(0.1) = 0.1003 on z" in html
    assert "Spearman ρ = " not in html.split("<h2>Findings</h2>")[1].split("<h2>")[0]
    man = json.loads((out / "manifest.json").read_text())
    for key in ("seeds", "versions", "batch_size", "device", "dtype", "wall_time_s"):
        assert key in man
    assert man["model"]["attn_implementation"] and man["versions"]["torch"]


def test_summary_matches_records(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    rec = pd.read_parquet(quick_run / "records.parquet")
    n_layers = summary["n_layers"]
    assert rec["layer"].nunique() == n_layers
    # no duplicated trials: one row per (condition, seed, query, layer)
    assert not rec.duplicated(["condition", "seed", "query", "layer"]).any()
    base = rec[rec["base"]]
    for key in CONVERGENCE_KEYS:
        entry = summary[key]
        assert len(entry["per_layer"]["mean"]) == n_layers
        assert set(entry["last_layer"]) >= {"mean", "ci_low", "ci_high"}
        per_seed = base[base["layer"] == n_layers - 1].groupby("seed")[key].mean()
        assert entry["last_layer"]["mean"] == pytest.approx(per_seed.mean())
        lo, hi = entry["last_layer"]["ci_low"], entry["last_layer"]["ci_high"]
        assert lo <= entry["last_layer"]["mean"] <= hi
        assert -1 - 1e-9 <= rec[key].min() and rec[key].max() <= 1 + 1e-9
    facs = {(c["factor"], c["metric"]) for c in summary["correlations"]}
    assert ("demo_query_sim", "s_icl_it") in facs and ("k", "d_icl_it") in facs
    for c in summary["correlations"]:
        assert set(c) >= {"pearson_r", "pearson_p", "spearman_rho", "spearman_p", "n"}
    # flipped labels are really flipped; the control's demonstrations come from another task
    flipped = rec[rec["condition"] == "labels_flipped"]
    assert (flipped["label_correctness"] == 0).all()
    assert (rec[rec["condition"] == "k1"]["label_correctness"] == 1).all()


def test_resume_after_kill_gives_identical_records(quick_run, tmp_path):
    out = tmp_path / "killed"
    cmd = CMD + ["--set", "seeds=1", "--out", str(out)]  # one seed: its units are the quick run's seed-0 units
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(list((out / "shards").glob("*.parquet"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((out / "shards").glob("*.parquet")))
    assert 3 <= n_before and not (out / "summary.json").exists(), "the kill should land mid-run"
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    a = pd.read_parquet(quick_run / "records.parquet")
    a = a[a["seed"] == 0].reset_index(drop=True)
    b = pd.read_parquet(out / "records.parquet")
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a, b)  # same seeds -> identical numbers, no lost or duplicated rows
    assert not list((out / "shards").glob(".*.tmp"))


runner = CliRunner()


def _fails_cleanly(args, tmp_path, match):
    out = tmp_path / "bad"
    res = runner.invoke(app, ["run", "convergence", "--quick", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], res.output
    assert not out.exists()


def test_unknown_model(tmp_path):
    _fails_cleanly(["--model", "./no-such-model"], tmp_path, "unknown model")
    # a bare name is a hub id (gpt2): offline it fails on the hub, not as "not a hub id"
    _fails_cleanly(["--model", "no-such-model"], tmp_path, "no-such-model")


def test_malformed_yaml(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: sentiment\nk_values: [1, 2\n")
    _fails_cleanly(["--spec", str(spec)], tmp_path, "malformed YAML")


def test_unknown_task_and_field(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: no-such-task\n")
    _fails_cleanly(["--spec", str(spec)], tmp_path, "unknown task")
    spec.write_text("k_valuez: [1]\n")
    _fails_cleanly(["--spec", str(spec)], tmp_path, "k_valuez")


def test_k_beyond_context(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("k_values: [1, 400]\ncontrol_task: null\n")
    _fails_cleanly(["--spec", str(spec)], tmp_path, "context window")


def test_empty_dataset(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"task: {data}\n")
    _fails_cleanly(["--spec", str(spec)], tmp_path, "no rows")


def test_label_words_with_colliding_first_tokens(tmp_path):
    # The built-in tokenizer lower-cases: "yes" and "Yes" are one token.
    data = tmp_path / "task.jsonl"
    rows = [{"input": f"item {i}", "label": ["yes", "Yes"][i % 2]} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"task: {data}\ncontrol_task: null\n")
    _fails_cleanly(["--spec", str(spec)], tmp_path, "share their first token")


def test_missing_pad_token(tmp_path, tok):
    from iclft.models.toy import tiny_model, word_tokenizer

    model_dir = tmp_path / "nopad"
    t = word_tokenizer(["tweet sentiment positive negative"], extra=("positive", "negative"))
    t.pad_token = None
    t.save_pretrained(model_dir)
    tiny_model("llama", len(t)).save_pretrained(model_dir)
    _fails_cleanly(["--model", str(model_dir)], tmp_path, "no pad token")


def test_existing_run_with_other_spec_is_refused(quick_run):
    res = runner.invoke(app, ["run", "convergence", "--out", str(quick_run), "--seeds", "3"])
    assert res.exit_code == 2 and "different spec" in res.output
    assert (quick_run / "summary.json").is_file()  # the finished run is left alone


def test_report_rerender(quick_run):
    """`iclft report` renders report.html and the figures again from the records and summary."""
    html = (quick_run / "report.html").read_text()
    (quick_run / "report.html").write_text("stale")
    figures = sorted(p.name for p in (quick_run / "figures").glob("*.svg"))
    for p in (quick_run / "figures").glob("*.svg"):
        p.unlink()
    res = runner.invoke(app, ["report", str(quick_run)])
    assert res.exit_code == 0, res.output
    assert f"report: {quick_run / 'report.html'}" in res.output
    again = (quick_run / "report.html").read_text()
    assert again != "stale" and "Findings" in again and "data:image/svg+xml;base64," in again
    assert sorted(p.name for p in (quick_run / "figures").glob("*.svg")) == figures
    assert len(again) == pytest.approx(len(html), rel=0.01)  # the same report (figures re-encoded: bytes may differ)
    assert np.isfinite(json.loads((quick_run / "summary.json").read_text())["s_icl_it"]["last_layer"]["mean"])
