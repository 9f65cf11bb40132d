"""The local executor's worker processes and faults: a worker that dies has its unit sent again to a fresh one
(up to `retries` times, counted in the manifest), and the workers end with their driver however it ends:
Ctrl-C stops a run at once (saying what is lost), SIGTERM and kill -9 leave no orphans."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from pydantic import Field

from iclft.studies.common import RunSpec
from iclft.studies.protocol import Study, Unit
from iclft.sweep import run_study
from iclft.sweep.executors import LocalExecutor, make_executor

ROOT = Path(__file__).resolve().parents[1]


class FaultSpec(RunSpec):
    seeds: int = Field(4, ge=1)
    dir: str = ""  # where units leave markers
    crash: str = ""  # once | always: unit s2 ends its worker process (os._exit) the first time | every time
    block: bool = False  # units after s0 write their worker's pid (dir/worker-PID) and wait


def _setup(spec):
    return SimpleNamespace(loaded=SimpleNamespace(info={"model": "toy", "n_layers": 1}))


def _unit(spec, ctx, unit):
    s, d = unit.params["seed"], Path(spec.dir)
    if spec.crash and s == 2:
        with open(d / "attempts", "a") as f:
            f.write(f"{os.getpid()}\n")
        if spec.crash == "always" or not (d / "crashed").exists():
            (d / "crashed").touch()
            os._exit(1)
    if spec.block and s > 0:
        (d / f"worker-{os.getpid()}").touch()
        time.sleep(60)
    return pd.DataFrame({"seed": [s, s], "x": [s * 0.5, float(s * s)]})


FAULTY = Study("faulty", FaultSpec, {}, _setup, lambda spec, ctx: [Unit(f"s{s}", {"seed": s})
                                                                  for s in spec.seed_list()],
               _unit, lambda records, spec, info: {"study": "faulty", "n": len(records), "headlines": []})


def test_make_executor_passes_retries_to_local():
    assert make_executor("local", workers=2, retries=5, address=None, gpus_per_worker=0).retries == 5
    assert make_executor("local", retries=None).retries == 2


def test_dead_worker_process_is_replaced_and_its_unit_retried(tmp_path):
    one = run_study(FAULTY, FaultSpec(dir=str(tmp_path)), tmp_path / "one", LocalExecutor(workers=1))
    two = run_study(FAULTY, FaultSpec(dir=str(tmp_path), crash="once"), tmp_path / "two", LocalExecutor(workers=2))
    assert len((tmp_path / "attempts").read_text().split()) == 2  # it died once, then ran on a fresh worker
    pd.testing.assert_frame_equal(pd.read_parquet(two / "records.parquet"), pd.read_parquet(one / "records.parquet"))
    executor = json.loads((two / "manifest.json").read_text())["executor"]
    assert executor == {"executor": "local", "workers": 2, "retries_allowed": 2, "retries": {"s2": 1}}


def test_worker_deaths_beyond_retries_fail_the_run(tmp_path):
    with pytest.raises(RuntimeError, match="giving up"):
        run_study(FAULTY, FaultSpec(dir=str(tmp_path), crash="always"), tmp_path / "run",
                  LocalExecutor(workers=2, retries=1))
    assert len((tmp_path / "attempts").read_text().split()) == 2  # the first try and one retry


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:  # a zombie is dead: nothing reaps an orphan's where PID 1 does not
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_workers_end_with_their_driver(tmp_path, sig):
    """A driver running 2 worker processes, each blocked in a unit, gets Ctrl-C (SIGINT to its process group, as
    a terminal sends it), SIGTERM or kill -9: every process it started (workers, multiprocessing's resource
    tracker) is gone within seconds; Ctrl-C also says how many units it discards and keeps the finished one."""
    drive = (f"from iclft.sweep import run_study; from iclft.sweep.executors import LocalExecutor; "
             f"from tests.test_executor_faults import FAULTY, FaultSpec; "
             f"run_study(FAULTY, FaultSpec(seeds=3, dir={str(tmp_path)!r}, block=True), "
             f"__import__('pathlib').Path({str(tmp_path / 'run')!r}), LocalExecutor(workers=2))")
    proc = subprocess.Popen([sys.executable, "-c", drive], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("worker-*"))) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        workers = {int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")}
        started = _children(proc.pid)
        assert len(workers) == 2 and workers <= started  # with multiprocessing's resource tracker
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        sent = time.time()
        proc.wait(timeout=10)
        while any(map(_alive, started)) and time.time() < sent + 5:
            time.sleep(0.1)
        gone = time.time() - sent
        print(f"{sig.name}: driver and {len(started)} children gone in {gone:.1f} s")
        assert not any(map(_alive, started))
        if sig == signal.SIGINT:
            err = proc.stderr.read()
            assert proc.returncode == -signal.SIGINT and gone < 5
            assert "stopping: 2 units in flight are discarded; rerun the same command to resume" in err
            assert [p.name for p in (tmp_path / "run" / "shards").glob("*.parquet")] == ["s0.parquet"]
    finally:
        if proc.poll() is None:
            proc.kill()
