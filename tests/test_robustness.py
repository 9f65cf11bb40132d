"""Faults after a run starts (issue 14): crashes inside a unit, file-system errors, devices that are not there,
corrupted run files, weight identity of sharded checkpoints, every study set up before the first unit runs,
file modes."""

import json
import os
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from pydantic import Field
from transformers import AutoTokenizer
from typer.testing import CliRunner

from iclft import UserError
from iclft.cli import app
from iclft.models.load import BUILTIN_DIR, weights_hash
from iclft.models.toy import tiny_model
from iclft.studies.common import RunSpec
from iclft.studies.protocol import Study, Unit
from iclft.sweep import run_study

runner = CliRunner()


class ToySpec(RunSpec):
    seeds: int = Field(3, ge=1)
    crash: bool = False


def _setup(spec):
    return SimpleNamespace(loaded=SimpleNamespace(info={"model": "toy", "n_layers": 1}))


def _unit(spec, ctx, unit):
    if spec.crash:
        raise ZeroDivisionError("a bug inside a unit")
    return pd.DataFrame({"seed": [unit.params["seed"]], "x": [1.0]})


TOY = Study("toy", ToySpec, {}, _setup, lambda spec, ctx: [Unit(f"s{s}", {"seed": s}) for s in spec.seed_list()],
            _unit, lambda records, spec, info: {"study": "toy", "headlines": []})


def test_a_crash_inside_a_unit_leaves_nothing_that_blocks_a_corrected_rerun(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        run_study(TOY, ToySpec(crash=True), out)
    assert not out.exists()
    run_study(TOY, ToySpec(), out)  # the corrected spec runs in the same place
    assert len(pd.read_parquet(out / "records.parquet")) == 3


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = run_study(TOY, ToySpec(), tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("spec.yaml", "records.parquet", "summary.json", "manifest.json", "shards/s0.parquet"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def _fails_cleanly(args, needle):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_out_that_is_a_file_is_one_error_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _fails_cleanly(["run", "dual", "--quick", "--out", str(f)], "is a file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_error_line(tmp_path):
    _fails_cleanly(["run", "dual", "--quick", "--set", "device=cuda", "--out", str(tmp_path / "x")], "no CUDA")
    assert not (tmp_path / "x").exists()


def test_corrupted_run_files_given_to_report_are_one_error_line(tmp_path):
    out = run_study(TOY, ToySpec(), tmp_path / "run")
    (out / "summary.json").write_text("{not json")
    _fails_cleanly(["report", str(out)], "summary.json changed after the run finished")
    (out / "summary.json").write_text(json.dumps({"study": "toy"}))
    (out / "records.parquet").write_bytes(b"PAR1 garbage")
    _fails_cleanly(["report", str(out)], "records.parquet, summary.json changed after the run finished")
    (out / "finished.json").unlink()
    _fails_cleanly(["report", str(out)], "not a finished run directory (missing finished.json)")


def test_sharded_checkpoints_are_hashed_and_a_changed_shard_changes_the_identity(tmp_path):
    model = tiny_model("llama", 50, seed=0)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    before = weights_hash(tmp_path)
    assert before is not None
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 1
    shards[-1].write_bytes(bytes(data))
    from iclft.models.load import _sha256

    _sha256.cache_clear()
    assert weights_hash(tmp_path) != before


def test_run_all_sets_every_study_up_before_the_first_unit(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("implicit:\n  rules: {parity: no-such-rule}\n")
    _fails_cleanly(["run", "all", "--quick", "--spec", str(spec), "--out", str(tmp_path / "all")], "unknown rule")
    assert not (tmp_path / "all").exists()  # convergence and dual did not start either


def test_tiny_model_with_builtin_tokenizer_loads_with_a_hash(tmp_path):
    from iclft.models.load import load

    AutoTokenizer.from_pretrained(str(BUILTIN_DIR)).save_pretrained(tmp_path)
    tiny_model("llama", 5000, seed=0).save_pretrained(tmp_path)
    assert load(str(tmp_path)).info["model_sha256"] == weights_hash(tmp_path)
    with pytest.raises(UserError):
        load(str(tmp_path), device="cuda:7") if not torch.cuda.is_available() else (_ for _ in ()).throw(UserError())
