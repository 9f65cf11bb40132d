"""The local executor: in-process, or a pool of worker processes; records never depend on which."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from pydantic import Field
from transformers import AutoTokenizer
from typer.testing import CliRunner

from iclft import UserError
from iclft.cli import app
from iclft.models.load import BUILTIN_DIR
from iclft.models.toy import tiny_model
from iclft.studies.common import RunSpec
from iclft.studies.protocol import Study, Unit, prepare
from iclft.sweep import run_cells
from iclft.sweep.executors import LocalExecutor

runner = CliRunner()


class ToySpec(RunSpec):
    seeds: int = Field(3, ge=1)
    fail_at: int = -1


SETUPS = []


def _setup(spec):
    SETUPS.append(spec.seed_offset)
    return SimpleNamespace(loaded=SimpleNamespace(info={"model": "toy", "n_layers": 1}), base=spec.seed_offset)


def _unit(spec, ctx, unit):
    if unit.params["seed"] == spec.fail_at:
        raise UserError(f"unit {unit.id} failed")
    s = unit.params["seed"]
    return pd.DataFrame({"seed": [s, s], "x": [s * 0.5 + ctx.base, float(s * s)]})


TOY = Study("toy", ToySpec, {}, _setup, lambda spec, ctx: [Unit(f"s{s}", {"seed": s}) for s in spec.seed_list()],
            _unit, lambda records, spec, info: {"study": "toy", "n": len(records), "headlines": []})


def test_local_executor_rebuilds_dropped_contexts(tmp_path):
    SETUPS.clear()
    cells = [prepare(TOY, ToySpec(seeds=2, seed_offset=o), tmp_path / f"c{o}", keep_context=False) for o in (0, 10)]
    assert all(c.context is None for c in cells) and SETUPS == [0, 10]
    run_cells(cells, LocalExecutor())
    assert SETUPS == [0, 10, 0, 10]  # each cell's context built once more, when its first unit runs
    got = pd.read_parquet(tmp_path / "c10" / "records.parquet")
    assert got["seed"].tolist() == [10, 10, 11, 11] and got["x"].tolist() == [15.0, 100.0, 15.5, 121.0]


def test_process_pool_equals_in_process_and_reports_unit_errors(tmp_path):
    one = run_cells([prepare(TOY, ToySpec(seeds=5), tmp_path / "one")], LocalExecutor(workers=1))[0]
    two = run_cells([prepare(TOY, ToySpec(seeds=5), tmp_path / "two")], LocalExecutor(workers=2))[0]
    pd.testing.assert_frame_equal(pd.read_parquet(two / "records.parquet"), pd.read_parquet(one / "records.parquet"))
    assert json.loads((two / "manifest.json").read_text())["executor"] == {
        "executor": "local", "workers": 2, "retries_allowed": 2, "retries": {}}
    with pytest.raises(UserError, match="unit s3 failed"):  # a worker's error reaches the driver as is
        run_cells([prepare(TOY, ToySpec(seeds=5, fail_at=3), tmp_path / "bad")], LocalExecutor(workers=2))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    d = tmp_path_factory.mktemp("tiny_llama")
    tok.save_pretrained(d)
    tiny_model("llama", len(tok), seed=3).save_pretrained(d)
    return d


@pytest.mark.parametrize("study", ["convergence"])
def test_study_records_do_not_depend_on_local_workers(tiny_llama, tmp_path, study):
    runs = {}
    for n in (1, 2):
        res = runner.invoke(app, ["run", study, "--quick", "--model", str(tiny_llama), "--workers", str(n),
                                  "--out", str(tmp_path / f"w{n}")])
        assert res.exit_code == 0, res.output
        df = pd.read_parquet(tmp_path / f"w{n}" / "records.parquet")
        runs[n] = df.drop(columns=[c for c in df.columns if c.startswith("seconds")])
    pd.testing.assert_frame_equal(runs[2], runs[1])


def test_queue_keeps_a_group_on_one_worker_in_order():
    from iclft.sweep.executors import Job, _Queue

    units = [Unit(f"g{g}_{p}", {}, f"g{g}") for g in range(3) for p in ("a", "b", "c")] + [Unit("solo", {})]
    q = _Queue([Job("cell", _setup, _unit, ToySpec(), u) for u in units])
    ran = {0: [], 1: []}
    # two workers taking turns: each finishes its group before starting another
    while q.pending:
        for w in (0, 1):
            if q.pending:
                ran[w].append(q.take(w, "cell").unit.id)
    assert ran[0][:3] == ["g0_a", "g0_b", "g0_c"] and ran[1][:3] == ["g1_a", "g1_b", "g1_c"]
    assert sorted(ran[0] + ran[1]) == sorted(u.id for u in units)  # each unit once
    # the last group starts on a free worker; the other worker takes ungrouped units before it steals from it
    assert ran[0][3] == "g2_a" and ran[1][3] == "solo"
