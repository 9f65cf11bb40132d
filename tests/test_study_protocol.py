"""A study is a `Study`: a toy one runs end to end through `run_study` with no CLI or report-index code."""

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from pydantic import Field

import iclft
from iclft import UserError
from iclft.report.index import write_index
from iclft.studies.common import RunSpec
from iclft.studies.protocol import Study, Unit
from iclft.sweep import run_study

SRC = Path(iclft.__file__).parent


class ToySpec(RunSpec):
    seeds: int = Field(3, ge=1)
    scale: float = 2.0


calls = []


def toy_setup(spec):
    return SimpleNamespace(loaded=SimpleNamespace(info={"model": "toy", "n_layers": 1}))


def toy_unit(spec, ctx, unit):
    if spec.scale < 0:  # an input error found only once OUT exists
        raise UserError("scale must be >= 0")
    calls.append(unit.id)
    return pd.DataFrame({"seed": [unit.params["seed"]] * 2, "x": [spec.scale * unit.params["seed"], 1.0]})


def toy_summary(records, spec, model_info):
    return {"study": "toy", "n_seeds": int(records["seed"].nunique()), "mean_x": float(records["x"].mean()),
            "headlines": [{"claim": "x is positive", "metric": "mean x", "paper": "—", "verdict": "reproduced",
                           "value": {"mean": float(records["x"].mean()), "ci_low": 0.0, "ci_high": 9.0}}]}


def toy_render(out, records, summary, spec, model_info):
    path = Path(out) / "report.html"
    path.write_text(f"<p>{summary['mean_x']} over {len(records)} rows, scale {spec.scale}</p>")
    return path


TOY = Study("toy", ToySpec, {"quick": {"seeds": 1}}, toy_setup,
            lambda spec, ctx: [Unit(f"s{s}", {"seed": s}) for s in spec.seed_list()], toy_unit, toy_summary,
            ).rendered_by(toy_render)


def test_toy_study_runs_end_to_end_and_resumes(tmp_path):
    calls.clear()
    out = run_study(TOY, ToySpec(), tmp_path / "toy")
    assert calls == ["s0", "s1", "s2"]
    records = pd.read_parquet(out / "records.parquet")
    assert list(records["unit"]) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert records["x"].tolist() == [0.0, 1.0, 2.0, 1.0, 4.0, 1.0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_x"] == pytest.approx(1.5) and summary["n_seeds"] == 3
    assert (out / "report.html").read_text() == "<p>1.5 over 6 rows, scale 2.0</p>"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["study"] == "toy" and manifest["units"] == 3 and manifest["seeds"] == [0, 1, 2]
    assert sorted(p.name for p in (out / "shards").glob("*.parquet")) == ["s0.parquet", "s1.parquet", "s2.parquet"]
    assert not (out / "examples.json").exists()

    (out / "shards" / "s1.parquet").unlink()  # as if killed during s1: a rerun computes s1 alone
    run_study(TOY, ToySpec(), out)
    assert calls[3:] == ["s1"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "records.parquet"), records)

    index = write_index(tmp_path, {"toy": out})  # the index page reads the summary alone
    assert "x is positive" in index.read_text()


def test_toy_study_input_errors_leave_nothing_and_specs_must_match(tmp_path):
    with pytest.raises(UserError, match="scale"):
        run_study(TOY, ToySpec(scale=-1), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    run_study(TOY, ToySpec(seeds=1), tmp_path / "run")
    with pytest.raises(UserError, match="different spec"):
        run_study(TOY, ToySpec(seeds=2), tmp_path / "run")


def test_studies_and_reports_do_not_import_each_other():
    for folder, other in (("studies", "iclft.report"), ("report", "iclft.studies")):
        for path in (SRC / folder).glob("*.py"):
            assert other not in path.read_text(encoding="utf-8"), f"{path.name} imports {other}"
