"""Faults a long run must survive, and bad input that must be one `error:` line with nothing written: names that
would escape --out, a second run on the same directory, corrupted shards, a full disk, unrelated directories,
edited run files, sizes that cannot fit, malformed spec files and weights."""

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from pydantic import Field
from typer.testing import CliRunner

from iclft import UserError, rundir
from iclft.cli import app
from iclft.models.load import BUILTIN_DIR, load
from iclft.studies.common import RunSpec
from iclft.studies.protocol import Study, Unit
from iclft.sweep import run_study
from iclft.sweep.plan import cells, load_sweep

runner = CliRunner()


class FaultSpec(RunSpec):
    seeds: int = Field(3, ge=1)


calls: list[str] = []


def _unit(spec, ctx, unit):
    calls.append(unit.id)
    return pd.DataFrame({"seed": [unit.params["seed"]] * 2, "x": [float(unit.params["seed"]), 1.0]})


def _summary(records, spec, info):
    return {"study": "faults", "n_seeds": int(records["seed"].nunique()), "mean_x": float(records["x"].mean())}


def _render(out, records, summary, spec, info):
    path = Path(out) / "report.html"
    path.write_text(f"<p>{summary['mean_x']}</p>")
    return path


FAULTS = Study("faults", FaultSpec, {}, lambda spec: SimpleNamespace(loaded=SimpleNamespace(info={"model": "toy"})),
               lambda spec, ctx: [Unit(f"s{s}", {"seed": s}) for s in spec.seed_list()], _unit, _summary,
               ).rendered_by(_render)


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1 and "Traceback" not in result.output, lines
    return next(ln for ln in lines if ln.startswith("error:"))


# 1. names must not escape --out

def test_paths_outside_the_run_directory_are_refused(tmp_path):
    assert rundir.within(tmp_path, "a", "b") == tmp_path / "a" / "b"
    for parts in (("..", "x"), ("/abs/x",), ("a", "../../x")):
        with pytest.raises(UserError, match="outside"):
            rundir.within(tmp_path, *parts)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UserError, match="outside"):
        rundir.within(tmp_path, "link", "x")
    with pytest.raises(UserError, match="outside"):
        rundir.shard_path(tmp_path, "../../escaped")


@pytest.mark.parametrize("entry", ["models: [{name: ../X, model: builtin}]",
                                   "models: [{name: /abs/X, model: builtin}]",
                                   "models: [builtin]\nvariants: [{name: ../../v, set: {seeds: 1}}]"])
def test_sweep_names_are_plain(tmp_path, entry):
    (tmp_path / "s.yaml").write_text(entry + "\n")
    with pytest.raises(UserError, match="name"):
        load_sweep(tmp_path / "s.yaml")
    # a bare model path is slugged to a plain directory name inside OUT
    (tmp_path / "t.yaml").write_text("models: [../../weird/..hidden]\nstudies: [dual]\n")
    (cell,) = cells(load_sweep(tmp_path / "t.yaml"), tmp_path / "out", quick=True)
    assert cell[2].resolve().is_relative_to((tmp_path / "out").resolve()) and cell[2].parent.name == "hidden"


# 5. one run at a time on a directory

def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    with rundir.open_run(out, FaultSpec()):
        with pytest.raises(UserError, match=f"in use by another iclft run \\(pid {os.getpid()}\\)"):
            with rundir.open_run(out, FaultSpec()):
                pass
        assert (out / "spec.yaml").is_file()  # the refused run removed nothing
    with rundir.open_run(out, FaultSpec()):  # released when the holder is done (or dies: the kernel drops it)
        pass


def test_a_second_cli_run_names_the_holder(tmp_path):
    out = tmp_path / "dual"
    with rundir.open_run(out, FaultSpec()):
        result = runner.invoke(app, ["run", "dual", "--quick", "--workers", "1", "--out", str(out)])
    assert f"pid {os.getpid()}" in _error_line(result)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "identity.json", "spec.yaml"]


# 6. a corrupted shard is found and recomputed

@pytest.mark.parametrize("damage", ["truncate", "overwrite", "no checksum"])
def test_a_corrupted_shard_is_reported_and_recomputed(tmp_path, capsys, damage):
    out = run_study(FAULTS, FaultSpec(), tmp_path / "run")
    records = pd.read_parquet(out / "records.parquet")
    shard = out / "shards" / "s1.parquet"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:40])
    elif damage == "overwrite":  # a valid parquet file, but not the one that was written
        pd.DataFrame({"unit": ["s1"], "seed": [1], "x": [99.0]}).to_parquet(shard, index=False)
    else:
        shard.with_suffix(".sha256").unlink()
    calls.clear()
    capsys.readouterr()
    run_study(FAULTS, FaultSpec(), out)
    assert calls == ["s1"]
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "1 shard(s) failed their checksum" in notes[0] and notes[0].endswith(": s1")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "records.parquet"), records)


# 7. a full disk is one error line; the run resumes

def test_disk_full_during_finish_is_one_error_and_resumable(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = os.fsync

    def full(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device.*rerunning the same command resumes"):
        run_study(FAULTS, FaultSpec(), out)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    assert not (out / "summary.json").exists() and len(list((out / "shards").glob("*.parquet"))) == 3
    monkeypatch.setattr(os, "fsync", real)
    calls.clear()
    run_study(FAULTS, FaultSpec(), out)
    assert calls == [] and json.loads((out / "summary.json").read_text())["n_seeds"] == 3


# 8. `run all` and sweeps only write into their own directories

def test_run_all_refuses_an_unrelated_directory(tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    (d / "f").write_text("mine")
    assert "not an iclft directory" in _error_line(runner.invoke(app, ["run", "all", "--quick", "--out", str(d)]))
    assert sorted(p.name for p in d.iterdir()) == ["f"]
    run_dir = tmp_path / "single"  # a single study's directory is not a `run all` directory either
    with rundir.open_run(run_dir, FaultSpec()):
        pass
    assert "not an iclft directory" in _error_line(runner.invoke(app, ["run", "all", "--quick",
                                                                         "--out", str(run_dir)]))


def test_a_run_all_root_is_removed_when_nothing_finished_and_kept_for_resume(tmp_path):
    root = tmp_path / "all"
    with pytest.raises(UserError):
        with rundir.open_root(root, "run all"):
            raise UserError("a study's input was bad")
    assert not root.exists()
    with rundir.open_root(root, "run all"):
        (root / "study" / "shards").mkdir(parents=True)
        (root / "study" / "shards" / "u.parquet").write_bytes(b"x")
    with rundir.open_root(root, "run all"):  # the same command resumes
        pass
    with pytest.raises(UserError, match="holds an iclft run all run"):
        with rundir.open_root(root, "sweep"):
            pass


# 9. files edited after the run are not rendered as if true

@pytest.mark.parametrize("edit", ["manifest", "spec"])
def test_edited_run_files_are_refused_by_report_and_rewritten_by_a_rerun(tmp_path, edit):
    out = run_study(FAULTS, FaultSpec(), tmp_path / "run")
    if edit == "manifest":
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["model"]["model"] = "forged/model-70b"
        (out / "manifest.json").write_text(json.dumps(manifest))
    else:
        (out / "spec.yaml").write_text((out / "spec.yaml").read_text().replace("seeds: 3", "seeds: 2"))
    with pytest.raises(UserError, match=f"{edit}.* changed after the run finished"):
        rundir.read_finished(out)
    if edit == "manifest":  # a rerun of the same command writes the finished files again, from the shards
        calls.clear()
        run_study(FAULTS, FaultSpec(), out)
        assert calls == [] and json.loads((out / "manifest.json").read_text())["model"]["model"] == "toy"
        rundir.read_finished(out)


def test_report_of_an_edited_run_is_one_error_line(tmp_path):
    out = run_study(FAULTS, FaultSpec(), tmp_path / "run")
    (out / "summary.json").write_text((out / "summary.json").read_text().replace('"n_seeds": 3', '"n_seeds": 30'))
    assert "summary.json changed after the run finished" in _error_line(runner.invoke(app, ["report", str(out)]))
    result = runner.invoke(app, ["compare", str(out), "--out", str(tmp_path / "cmp")])
    assert "summary.json changed after the run finished" in _error_line(result)


# 10. sizes that cannot fit are refused up front

def test_a_run_that_cannot_fit_is_refused_with_the_estimate(tmp_path):
    with pytest.raises(UserError, match=r"100,000,000 units would need ~95\.4 GB of memory"):
        rundir.check_size("dual", 10**8, tmp_path / "not" / "yet")
    rundir.check_size("dual", 30, tmp_path)  # the papers' scale is nothing
    result = runner.invoke(app, ["run", "dual", "--quick", "--set", "seeds=100000000", "--out", str(tmp_path / "r")])
    assert "units would need" in _error_line(result) and not (tmp_path / "r").exists()


# bad input: one error line, nothing written

@pytest.mark.parametrize("content,expect", [
    (b"convergence: 5\n", "section 'convergence' must be a mapping"),
    (b"dual: [1, 2]\n", "section 'dual' must be a mapping"),
    (b"\xff\xfe\x00", "is not UTF-8"),
    (b"seeds: 3\nseeds: 4\n", "duplicate key 'seeds'"),
    (b"lora:\n  steps: 2\n  steps: 3\n", "duplicate key 'steps'"),
])
def test_malformed_spec_files_are_one_error_line(tmp_path, content, expect):
    (tmp_path / "s.yaml").write_bytes(content)
    assert expect in _error_line(runner.invoke(app, ["spec", "all", "--quick", "--spec", str(tmp_path / "s.yaml")]))


def test_a_spec_that_is_a_directory_and_boolean_numbers_are_errors(tmp_path):
    assert "is a directory" in _error_line(runner.invoke(app, ["spec", "dual", "--spec", str(tmp_path)]))
    for bad in ("seeds=true", "batch_size=false"):
        assert "a number is needed" in _error_line(runner.invoke(app, ["spec", "dual", "--set", bad]))
    ok = runner.invoke(app, ["spec", "dual", "--quick", "--set", "seeds=4"])
    assert ok.exit_code == 0 and "seeds: 4" in ok.output


def test_a_sweep_section_that_is_not_a_mapping_is_an_error(tmp_path):
    (tmp_path / "s.yaml").write_text("models: [builtin]\nspec: {dual: 5}\n")
    with pytest.raises(UserError, match="section 'dual' must be a mapping"):
        cells(load_sweep(tmp_path / "s.yaml"), tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_weights_are_one_error_line(tmp_path, damage):
    d = tmp_path / "model"
    shutil.copytree(BUILTIN_DIR, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000] if damage == "truncated" else os.urandom(4096))
    with pytest.raises(UserError, match="cannot load model"):
        load(str(d))
    result = runner.invoke(app, ["run", "dual", "--quick", "--model", str(d), "--out", str(tmp_path / "r")])
    assert "cannot load model" in _error_line(result) and not (tmp_path / "r").exists()


# progress a person can see where no bar can be drawn

def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    run_study(FAULTS, FaultSpec(seeds=40), tmp_path / "run")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("faults:")]
    assert lines[0].startswith("faults: 0/40 units (0%), elapsed 0:0") and "\r" not in "".join(lines)
    assert lines[-1].startswith("faults: 40/40 units (100%)")
    assert 20 <= len(lines) <= 22  # every 5 % (2 units) and the start, not one per unit
    assert "ETA" in lines[1] and "ETA" not in lines[-1]
