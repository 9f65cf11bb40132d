"""The Python API (`iclft.run`, `iclft.load`, `Run`) and what it shares with `iclft run`: building the specs
(`build_specs`), choosing the executor (`make_runner`) and running the studies (`run_dirs`). The command line
calls the same three functions, so a run started from a notebook is checked, resumed and recorded exactly as
one started from a shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclft import UserError, quietly

if TYPE_CHECKING:
    import pandas as pd

    from iclft.studies.common import RunSpec

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning threads slow torch badly.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tokenizers used before a fork (sweep executors) would otherwise warn and disable their threads anyway.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(study: str, out: str | os.PathLike, model: str | None = None, preset: str = "default",
        spec: str | os.PathLike | None = None, *, quick: bool = False, executor: str = "local",
        workers: int | None = None, ray_address: str | None = None, gpus_per_worker: float = 0, retries: int = 2,
        **fields: Any) -> Run | dict[str, Run]:
    """Run (or resume) `study` into `out`, as `iclft run STUDY --out OUT` does, and return the finished run.

    study:    "convergence", "dual", "implicit", or "all" (every study, each in OUT/<study>, and the index page
              OUT/report.html; returns {study: Run}).
    model:    "builtin" (the default), a hub id or a local path; None keeps what the spec file says.
    preset:   "default" (laptop-sized), "paper" (the papers' scale) or "quick" (`quick=True`, as --quick).
    spec:     a YAML spec file (as --spec); its fields override the preset's.
    fields:   spec fields over everything else, as --set: `seeds=3`, nested as a dict (`lora={"steps": 5}`) or
              with dots (`**{"lora.steps": 5}`); Python values, not YAML text.
    workers:  local worker processes (default 1: the units run in this process; more are spawned processes, so
              a script -- not a notebook -- must then keep its top level under `if __name__ == "__main__":`), or
              Ray actors with executor="ray" (default: as many as the cluster fits). Records do not depend on it.

    Rerunning the same call resumes: finished units are kept, and a finished run is only read back. Progress
    goes to stderr as the command line prints it; bad input raises `UserError` with the command line's message.
    """
    if executor == "local" and workers is None:
        workers = 1
    with quietly():  # no unlabelled "Loading weights" bars: each study's start line says what it loads
        dirs = run_dirs(study, Path(out), spec, preset, quick, {"model": model}, _nest(fields), executor,
                        ray_address, workers, gpus_per_worker, retries)
    runs = {name: load(path) for name, path in dirs.items()}
    return runs if study == "all" else runs[study]


def load(run_dir: str | os.PathLike) -> Run | dict[str, Run]:
    """A finished run directory, verified as `iclft report` verifies it: a file changed after the run finished
    (its SHA-256 differs from finished.json) raises `UserError`. A `run all` directory gives {study: Run}."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        subs = study_dirs(run_dir)
        if subs:
            return {name: load(path) for name, path in subs.items()}
    from iclft import rundir
    from iclft.registry import get_study

    summary, records, spec_data, _ = rundir.read_finished(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    study = get_study(str(summary.get("study")))
    try:
        spec = study.spec(**spec_data)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise UserError(f"{str(run_dir)!r}: spec.yaml does not fit this iclft's {study.name} spec "
                        f"({str(exc).splitlines()[0]})") from None
    return Run(run_dir, study.name, spec, summary, records, manifest)


@dataclass(frozen=True, repr=False, eq=False)
class Run:
    """A finished run directory, read back (`iclft.run` and `iclft.load` return one)."""

    path: Path
    study: str
    spec: RunSpec  # the effective spec (spec.yaml), typed
    summary: dict  # summary.json: everything the report shows
    records: pd.DataFrame  # records.parquet: one row per unit × seed × ... (the raw data)
    manifest: dict  # manifest.json: versions, command, seeds, model, wall time

    @property
    def headlines(self) -> pd.DataFrame:
        """One row per headline claim: claim, metric, value with its 95% interval (ci_low, ci_high; proportions
        as fractions), `shown` (as the report prints it), paper, verdict, caveat, smallest effect of interest
        (sesoi) and Holm-adjusted p."""
        import pandas as pd

        from iclft.report.html import fmt_value

        rows = [{"claim": h["claim"], "metric": h["metric"], "value": h["value"].get("mean"),
                 "ci_low": h["value"].get("ci_low"), "ci_high": h["value"].get("ci_high"), "shown": fmt_value(h),
                 "paper": h["paper"], "verdict": h.get("verdict"), "caveat": h.get("caveat") or "",
                 "sesoi": h.get("sesoi"), "p_holm": h.get("p_holm")} for h in self.summary.get("headlines", [])]
        return pd.DataFrame(rows, columns=["claim", "metric", "value", "ci_low", "ci_high", "shown", "paper",
                                           "verdict", "caveat", "sesoi", "p_holm"])

    @property
    def report(self) -> Path:
        """report.html: methods, every number, figures."""
        return self.path / "report.html"

    @property
    def figures(self) -> dict[str, Path]:
        """{name: SVG path} of figures/ (a 300 dpi PNG beside each after `iclft report --png`)."""
        return {p.stem: p for p in sorted((self.path / "figures").glob("*.svg"))}

    def __repr__(self) -> str:
        verdicts = self.headlines["verdict"].astype(str).str.split(":").str[0].value_counts()
        said = ", ".join(f"{n} {v}" for v, n in verdicts.items())
        return (f"Run({self.study!r}, {str(self.path)!r}: {self.summary.get('n_seeds')} seeds, preset "
                f"{self.spec.preset}, {len(self.records)} records; headlines: {said or 'none'})")


def _nest(fields: dict) -> dict:
    """{"lora.steps": 5, "seeds": 3} -> {"lora": {"steps": 5}, "seeds": 3}: dotted names as --set takes them."""
    from iclft.studies.common import merge

    out: dict = {}
    for key, value in fields.items():
        for part in reversed(key.split(".")[1:]):
            value = {part: value}
        out = merge(out, {key.split(".")[0]: value})
    return out


def build_specs(study: str, spec_path: str | os.PathLike | None = None, preset: str = "default",
                quick: bool = False, options: dict | None = None, fields: dict | None = None) -> dict[str, RunSpec]:
    """{study name: effective spec}: every study for "all" (each from its section of the file), else one.
    Precedence: class defaults < preset < spec file < `options` (None values skipped: not given) < `fields`."""
    from iclft.registry import STUDIES
    from iclft.studies import PRESETS
    from iclft.studies.common import load_spec, merge

    if study != "all" and study not in STUDIES:
        raise UserError(f"unknown study {study!r}; choose one of {', '.join(STUDIES)}, all")
    names = list(STUDIES) if study == "all" else [study]
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    preset = "quick" if quick else preset
    path = None if spec_path is None else Path(spec_path)
    overrides = merge({k: v for k, v in (options or {}).items() if v is not None}, fields or {})
    return {name: load_spec(STUDIES[name].spec, path, overrides, preset=STUDIES[name].presets.get(preset),
                            section=name if study == "all" else None, sections=list(STUDIES)) for name in names}


def make_runner(name: str, address: str | None = None, workers: int | None = None, gpus: float = 0,
                retries: int = 2):
    """The executor `--executor NAME` (with --ray-address, --workers, --gpus-per-worker, --retries) stands for."""
    from iclft.sweep.executors import make_executor

    if name == "local" and (address or gpus):
        raise UserError("--ray-address and --gpus-per-worker need --executor ray")
    return make_executor(name, address=address, workers=workers, gpus_per_worker=gpus, retries=retries)


def run_dirs(study: str, out: Path, spec_path: str | os.PathLike | None = None, preset: str = "default",
             quick: bool = False, options: dict | None = None, fields: dict | None = None, executor: str = "local",
             ray_address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0,
             retries: int = 2) -> dict[str, Path]:
    """`iclft run`: run (or resume) `study` ("all": every study, in OUT/<study>, and the index OUT/report.html)
    into OUT; returns {study: run directory}. Every study's spec is checked, and every study set up, before the
    first unit of any study runs."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a directory")
    specs = build_specs(study, spec_path, preset, quick, options, fields)
    if executor == "local" and workers is None:
        on_cpu = all(s.device == "cpu" for s in specs.values())
        workers = 2 if on_cpu and (os.cpu_count() or 1) >= 2 else 1
    runner = make_runner(executor, ray_address, workers, gpus_per_worker, retries)
    from iclft import rundir
    from iclft.registry import STUDIES
    from iclft.studies.protocol import prepare
    from iclft.sweep import run_cells

    remote = executor != "local"
    with rundir.open_root(out, "run all") if study == "all" else contextlib.nullcontext():
        cells = [prepare(STUDIES[name], s, out / name if study == "all" else out, keep_context=not remote)
                 for name, s in specs.items()]
        for cell in cells:  # one start banner per study instead of the libraries' unlabelled bars
            info = cell.info
            print(f"{cell.study.name}: model {info.get('model')} ({info.get('family')}, "
                  f"{info.get('n_params', 0):,} parameters, {cell.spec.device}), {len(cell.units)} units, "
                  f"preset {cell.spec.preset} -> {cell.out}", file=sys.stderr, flush=True)
        dirs = dict(zip(specs, run_cells(cells, runner), strict=True))
        if study == "all":  # the index, like a sweep's, is drawn again only when a study's files or the code changed
            from iclft.report.index import write_index
            from iclft.sweep import render_once

            render_once(out / "report.html", list(dirs.values()), lambda: write_index(out, dirs))
    return dirs


def study_dirs(run_dir: Path) -> dict[str, Path]:
    """{study: OUT/<study>} of a `run all` directory: the studies with a summary.json there."""
    from iclft.registry import STUDIES

    return {name: Path(run_dir) / name for name in STUDIES if (Path(run_dir) / name / "summary.json").is_file()}
