"""Render only what changed: a rerun that computes nothing leaves a finished run's report alone (its renderer is not
called), while a changed input or other code renders it again; figures drawn side by side in forked processes
equal figures drawn in order, byte for byte."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from iclft import rundir
from iclft.registry import STUDIES
from iclft.report import dual_view
from iclft.report.figures import draw_all, plt, save
from iclft.studies.protocol import Cell, Unit
from iclft.sweep import render_once, run_cells
from tests.conftest import copy_run


@pytest.fixture
def dual_run(quick_all, tmp_path):
    return copy_run(quick_all / "dual", tmp_path / "dual")


def _cell(out, calls: list) -> Cell:
    """The finished run at OUT as a rerun's driver sees it (what `prepare` would find), its renderer counted."""
    study = STUDIES["dual"]

    def probe(*args):
        calls.append(args[0])
        return study.render(*args)

    spec = study.spec(**yaml.safe_load((out / "spec.yaml").read_text()))
    info = json.loads((out / "manifest.json").read_text())["model"]
    units = [Unit(u) for u in pd.read_parquet(out / "records.parquet")["unit"].unique()]
    return Cell(study.rendered_by(probe), spec, out, units, info, {}, None, 0.0)


def _stats(out):
    files = [out / f for f in ("report.html", "manifest.json", "summary.json", "records.parquet", "finished.json")]
    files += sorted((out / "figures").iterdir())
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def test_a_rerun_with_nothing_new_renders_nothing(dual_run):
    before, calls = _stats(dual_run), []
    run_cells([_cell(dual_run, calls)])
    assert calls == [] and _stats(dual_run) == before


@pytest.mark.parametrize("change", ["summary", "code", "shard"])
def test_a_changed_input_or_other_code_renders_again_once(dual_run, monkeypatch, change):
    before, calls = _stats(dual_run), []
    if change == "summary":  # edited after the run: written again from the shards
        (dual_run / "summary.json").write_text((dual_run / "summary.json").read_text() + " ")
    elif change == "code":  # the same version number, other source (a new checkout)
        monkeypatch.setattr(rundir, "code_sha256", lambda: "0" * 64)
    else:  # a shard newer than the run's files: killed while finishing
        shard = next((dual_run / "shards").glob("*.parquet"))
        os.utime(shard, ns=(shard.stat().st_atime_ns, before["manifest.json"][1] + 10**9))
    run_cells([_cell(dual_run, calls)])
    assert calls == [dual_run]
    after = _stats(dual_run)
    assert after["report.html"] != before["report.html"] and after["finished.json"] != before["finished.json"]
    rundir.check_finished(dual_run)
    run_cells([_cell(dual_run, calls)])  # and then it is up to date
    assert calls == [dual_run] and _stats(dual_run) == after


def test_a_sweep_index_is_drawn_again_only_when_a_run_or_the_code_changed(tmp_path, monkeypatch):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / rundir.FINISHED).write_text(json.dumps({"sha256": {"summary.json": name}}))
        runs.append(tmp_path / name)
    page, calls = tmp_path / "index.html", []

    def render():
        calls.append(1)
        page.write_text(f"render {len(calls)}")
        return page

    assert render_once(page, runs, render) == page and len(calls) == 1
    assert render_once(page, runs, render) == page and len(calls) == 1  # nothing changed
    (runs[1] / rundir.FINISHED).write_text(json.dumps({"sha256": {"summary.json": "b2"}}))
    render_once(page, runs, render)
    assert len(calls) == 2
    render_once(page, runs[:1], render)  # a run fewer
    assert len(calls) == 3
    monkeypatch.setattr(rundir, "code_sha256", lambda: "0" * 64)
    render_once(page, runs[:1], render)
    assert len(calls) == 4
    page.unlink()
    render_once(page, runs[:1], render)
    assert len(calls) == 5 and page.read_text() == "render 5"


def test_figures_drawn_side_by_side_equal_figures_drawn_in_order(quick_all, tmp_path, monkeypatch):
    summary, records, _, _ = rundir.read_finished(quick_all / "dual")
    side = dual_view.figures(tmp_path / "side", records, summary)
    monkeypatch.setattr(dual_view, "draw_all", lambda tasks: [fn(*args) for fn, *args in tasks])
    order = dual_view.figures(tmp_path / "order", records, summary)
    assert list(side) == list(order) and len(side) == 2
    for caption in side:
        assert side[caption].suffix == ".svg" and side[caption].read_bytes() == order[caption].read_bytes()
    assert not list((tmp_path / "side" / "figures").glob("*.png"))


CHECK_DRAW_ALL = """
import os, threading
from iclft.report.figures import draw_all
assert os.getpid() not in draw_all([(os.getpid,)] * 3), "not drawn in other processes"
stop = threading.Event()
other = threading.Thread(target=stop.wait)
other.start()
try:  # a forked copy of a threaded process may deadlock: drawn here, in order
    assert draw_all([(os.getpid,)] * 3) == [os.getpid()] * 3, "drawn in other processes beside a thread"
finally:
    stop.set()
    other.join()
"""


def test_draw_all_uses_other_processes_unless_threads_run():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    # a fresh interpreter: this one may run other threads (Ray, torch) by the time this test runs
    proc = subprocess.run([sys.executable, "-c", CHECK_DRAW_ALL], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_figure_that_fails_in_a_worker_fails_the_report(tmp_path):
    fig, ax = plt.subplots()
    ax.set_xlabel("layer")  # no y label
    with pytest.raises(ValueError, match="unlabelled axes"):
        draw_all([(save, fig, tmp_path / "f.svg"), (os.getpid,)])
