"""The Ray executor on a local Ray instance started here (2 CPUs): records equal the local executor's, a worker
killed mid-unit (by itself or from outside) has its unit retried once Ray restarted it, a driver killed with
SIGKILL resumes with nothing lost or duplicated, a sweep of 2 tiny models × 3 studies runs with --quick, and
`compare` reads the sweep's runs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import ray
from pydantic import Field
from ray import cloudpickle
from transformers import AutoTokenizer
from typer.testing import CliRunner

from iclft.cli import app
from iclft.models.load import BUILTIN_DIR
from iclft.models.toy import tiny_model
from iclft.studies.common import RunSpec
from iclft.studies.protocol import Study, Unit
from iclft.sweep import run_study
from iclft.sweep.executors import RayExecutor

runner = CliRunner()
# this module's toy study runs on Ray workers, which cannot import a test module: ship it by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Two tiny random models of different families with the built-in tokenizer: every task tokenises."""
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    dirs = {}
    for kind in ("llama", "gpt2"):
        d = tmp_path_factory.mktemp(f"tiny_{kind}")
        tok.save_pretrained(d)
        tiny_model(kind, len(tok), seed=3).save_pretrained(d)
        dirs[kind] = d
    return dirs


class CrashSpec(RunSpec):
    seeds: int = Field(4, ge=1)
    marker: str = ""  # a file: the first worker to see it missing creates it and dies mid-unit
    hold: str = ""  # a directory: unit s2 writes its worker's pid there and waits, unless hold/killed exists


def _setup(spec):
    return SimpleNamespace(loaded=SimpleNamespace(info={"model": "toy", "n_layers": 1}))


def _unit(spec, ctx, unit):
    s = unit.params["seed"]
    if spec.marker and s == 2 and not os.path.exists(spec.marker):
        Path(spec.marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # this worker dies in the middle of the unit
    if spec.hold and s == 2 and not (Path(spec.hold) / "killed").exists():
        (Path(spec.hold) / "pid.tmp").write_text(str(os.getpid()))
        os.replace(Path(spec.hold) / "pid.tmp", Path(spec.hold) / "pid")
        time.sleep(60)  # until the test kills this worker
    return pd.DataFrame({"seed": [s, s], "x": [s * 0.5, float(s * s)]})


CRASHY = Study("crashy", CrashSpec, {}, _setup, lambda spec, ctx: [Unit(f"s{s}", {"seed": s})
                                                                  for s in spec.seed_list()],
               _unit, lambda records, spec, info: {"study": "crashy", "n": len(records), "headlines": []})


def _records(run: Path) -> pd.DataFrame:
    """Every column but wall-clock timings (seconds_*), which no two runs share."""
    df = pd.read_parquet(run / "records.parquet")
    return df.drop(columns=[c for c in df.columns if c.startswith("seconds")])


def test_worker_killed_mid_unit_is_retried(cluster, tmp_path):
    marker = tmp_path / "died"
    local = run_study(CRASHY, CrashSpec(), tmp_path / "local")
    out = run_study(CRASHY, CrashSpec(marker=str(marker)), tmp_path / "ray",
                    executor=RayExecutor(workers=2, retries=2))
    assert marker.is_file()  # a worker really died
    pd.testing.assert_frame_equal(_records(out), _records(local))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["executor"]["executor"] == "ray" and manifest["executor"]["retries"] == {"s2": 1}


def test_worker_killed_from_outside_is_retried_once_restarted(cluster, tmp_path):
    """kill -9 from outside (an operator, the OOM killer): Ray restarts the actor, which takes seconds; the
    unit waits for it instead of being re-sent at once to the restarting actor, burning its retries."""
    hold = tmp_path / "hold"
    hold.mkdir()

    def kill_the_worker():
        while not (hold / "pid").is_file():
            if done.wait(0.05):
                return
        (hold / "killed").touch()  # the retried unit does not wait
        os.kill(int((hold / "pid").read_text()), signal.SIGKILL)
        killed_at.append(time.time())

    killed_at: list = []
    done = threading.Event()
    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    try:  # one worker: the unit can only be retried on the actor that was killed
        out = run_study(CRASHY, CrashSpec(hold=str(hold)), tmp_path / "ray",
                        executor=RayExecutor(workers=1, retries=1))
    finally:
        done.set()
    assert killed_at, "the worker was not killed"
    print(f"killed worker to finished run: {time.time() - killed_at[0]:.1f} s")
    pd.testing.assert_frame_equal(_records(out), _records(run_study(CRASHY, CrashSpec(), tmp_path / "local")))
    assert json.loads((out / "manifest.json").read_text())["executor"]["retries"] == {"s2": 1}


def test_worker_deaths_beyond_retries_fail_the_run(cluster, tmp_path):
    marker = tmp_path / "died"
    with pytest.raises(RuntimeError, match="giving up"):
        run_study(CRASHY, CrashSpec(marker=str(marker)), tmp_path / "ray", executor=RayExecutor(workers=1, retries=0))
    # the units that finished are kept for the rerun
    assert {p.stem for p in (tmp_path / "ray" / "shards").glob("*.parquet")} <= {"s0", "s1", "s3"}


def test_study_on_ray_equals_local_and_survives_driver_kill(cluster, tiny_dirs, tmp_path):
    model = str(tiny_dirs["llama"])
    args = ["run", "dual", "--quick", "--model", model, "--set", "seeds=3"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "local")])
    assert res.exit_code == 0, res.output
    # the driver in its own process, joining the cluster this test started; killed once a shard is written
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "iclft", *args, "--out", str(out), "--executor", "ray", "--ray-address", cluster,
           "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any((out / "shards").glob("*.parquet")):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards_before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    assert 1 <= len(shards_before) < 3 and not (out / "records.parquet").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # finished shards were kept, not recomputed; the records equal an uninterrupted local run
    assert all((out / "shards" / n).stat().st_mtime_ns == t for n, t in shards_before.items())
    pd.testing.assert_frame_equal(_records(out), _records(tmp_path / "local"))
    assert json.loads((out / "manifest.json").read_text())["executor"]["executor"] == "ray"


def test_sweep_of_two_models_and_three_studies_then_compare(cluster, tiny_dirs, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"models:\n  - {{name: tiny-llama, model: {tiny_dirs['llama']}}}\n"
                     f"  - {{name: tiny-gpt2, model: {tiny_dirs['gpt2']}}}\n"
                     "studies: [convergence, dual, implicit]\nspec:\n  seeds: 2\n")
    started = time.time()
    res = runner.invoke(app, ["sweep", str(sweep), "--quick", "--out", str(tmp_path / "sw"), "--executor", "ray"])
    assert res.exit_code == 0, res.output
    wall = time.time() - started
    cells = sorted(p.parent for p in (tmp_path / "sw").rglob("summary.json"))
    assert [str(c.relative_to(tmp_path / "sw")) for c in cells] == [
        f"{m}/{s}" for m in ("tiny-gpt2", "tiny-llama") for s in ("convergence", "dual", "implicit")]
    index = (tmp_path / "sw" / "index.html").read_text()
    assert "tiny-llama/dual" in index and "tiny-gpt2/implicit" in index
    # a cell equals the same study run alone on the local executor (dual is compared in the test above)
    res = runner.invoke(app, ["run", "implicit", "--quick", "--model", str(tiny_dirs["gpt2"]), "--set", "seeds=2",
                              "--out", str(tmp_path / "local")])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(_records(tmp_path / "sw" / "tiny-gpt2" / "implicit"), _records(tmp_path / "local"))
    # a rerun resumes: nothing to do, same records
    before = _records(tmp_path / "sw" / "tiny-llama" / "dual")
    res = runner.invoke(app, ["sweep", str(sweep), "--quick", "--out", str(tmp_path / "sw"), "--executor", "ray"])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(_records(tmp_path / "sw" / "tiny-llama" / "dual"), before)
    # compare: one column per model, every study's headlines, CSV beside the HTML
    res = runner.invoke(app, ["compare", str(tmp_path / "sw"), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(table["study"]) == {"convergence", "dual", "implicit"}
    assert table.groupby("study")["run"].nunique().eq(2).all()
    assert (tmp_path / "cmp" / "figures" / "compare_dual.png").is_file()
    print(f"sweep wall time: {wall:.1f} s")


def test_ray_executor_without_ray_is_one_error_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    res = runner.invoke(app, ["run", "dual", "--quick", "--out", str(tmp_path / "x"), "--executor", "ray"])
    assert res.exit_code == 2 and "pip install 'iclft[ray]'" in res.output
    assert not (tmp_path / "x").exists()
