"""`iclft` command line. Input errors print one line and exit with code 2."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import typer

from iclft import UserError, quiet_libraries
from iclft.api import build_specs, make_runner, run_dirs, study_dirs  # (sets the process's thread defaults)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Does ICL change a model the way fine-tuning does?")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect and evaluate models.")
app.add_typer(models_app, name="models")

STUDY_HELP = "a study (an unknown name lists them), or all"
EXECUTOR_HELP = "local (this machine: this process, or --workers processes) | ray (Ray actors; needs iclft\\[ray])"
RAY_ADDRESS_HELP = "Ray cluster to join: auto | HOST:PORT (default: start a local Ray instance)"
WORKERS_HELP = ("parallel workers, each loading the model once: Ray actors (default: as many as the cluster's "
                "CPUs / GPUs fit) or local processes (default: 2 for a CPU run on >= 2 cores, sharing the cores; "
                "records do not depend on it)")
RETRIES_HELP = "times a unit is re-sent after its worker (a Ray actor or a local worker process) died"


SET_HELP = "FIELD=VALUE over the spec (YAML value; nested fields with dots: lora.steps=5); repeatable"


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _setup_logging():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()



@app.command()
@user_errors
def run(
    study: str = typer.Argument(..., help=STUDY_HELP),
    out: Path = typer.Option(..., "--out", help="run directory (rerun the same command to resume)"),
    spec: Path | None = typer.Option(None, "--spec", help="YAML spec; fields override the defaults"),
    quick: bool = typer.Option(False, "--quick", help="tiny preset (a minute or two) for tests and CI"),
    preset: str = typer.Option("default", "--preset", help="default (laptop-sized) | paper (the papers' scale) | "
                               "quick (same as --quick)"),
    model: str | None = typer.Option(None, "--model", help="'builtin', a hub id or a local path"),
    seeds: int | None = typer.Option(None, "--seeds", help="number of seeds"),
    pad_token: str | None = typer.Option(None, "--pad-token", help="pad token if the tokenizer lacks one"),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, help="GPUs each Ray worker holds"),
    retries: int = typer.Option(2, "--retries", min=0, help=RETRIES_HELP),
):
    """Run a study into OUT: records.parquet, summary.json, figures/, report.html, manifest.json."""
    _setup_logging()
    from iclft.studies.common import parse_sets

    dirs = run_dirs(study, out, spec, preset, quick, dict(model=model, seeds=seeds, pad_token=pad_token),
                    parse_sets(sets or []), executor, ray_address, workers, gpus_per_worker, retries)
    typer.echo(f"report: {out / 'report.html' if study == 'all' else dirs[study] / 'report.html'}")


@app.command()
@user_errors
def sweep(
    sweep_file: Path = typer.Argument(..., help="SWEEP.yaml: models, studies, preset, spec, variants"),
    out: Path = typer.Option(..., "--out", help="sweep directory: one run directory per cell (rerun to resume)"),
    quick: bool = typer.Option(False, "--quick", help="every cell with the quick preset"),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, help="GPUs each Ray worker holds"),
    retries: int = typer.Option(2, "--retries", min=0, help=RETRIES_HELP),
):
    """Run a grid of models × studies (× spec variants): every cell's units scheduled together, one index page."""
    _setup_logging()
    from iclft.sweep.plan import run_sweep

    runner = make_runner(executor, ray_address, workers, gpus_per_worker, retries)
    typer.echo(f"report: {run_sweep(sweep_file, out, runner, quick=quick)}")


@app.command()
@user_errors
def compare(
    runs: list[Path] = typer.Argument(..., help="run directories (or directories holding runs: run all, sweeps)"),
    out: Path = typer.Option(..., "--out", help="where compare.html, compare.csv and figures/ go"),
):
    """Headline numbers of several runs side by side with their 95% CIs, per study, and against model size."""
    _setup_logging()
    from iclft.report.compare import write_compare

    typer.echo(f"report: {write_compare(out, runs)}")


@app.command("spec")
@user_errors
def spec_command(
    study: str = typer.Argument(..., help=STUDY_HELP),
    spec: Path | None = typer.Option(None, "--spec", help="YAML spec; fields override the defaults"),
    quick: bool = typer.Option(False, "--quick", help="the quick preset"),
    preset: str = typer.Option("default", "--preset", help="default | paper | quick"),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
):
    """Print the effective spec as YAML: what `iclft run` with the same options writes to spec.yaml (and takes
    back with --spec)."""
    from iclft.rundir import spec_yaml

    specs = _specs(study, spec, quick, preset, sets)
    if study == "all":
        import yaml

        typer.echo(yaml.safe_dump({k: v.model_dump(mode="json") for k, v in specs.items()}, sort_keys=False), nl=False)
    else:
        typer.echo(spec_yaml(specs[study]), nl=False)


def _specs(study: str, spec_path: Path | None, quick: bool, preset: str, sets: list[str] | None) -> dict:
    from iclft.studies.common import parse_sets

    return build_specs(study, spec_path, preset, quick, fields=parse_sets(sets or []))


@app.command()
@user_errors
def report(run_dir: Path = typer.Argument(..., help="a finished run directory"),
           png: bool = typer.Option(False, "--png", help="also write each figure as a 300 dpi PNG beside its SVG "
                                    "(figures/*.png; the page shows the SVG)")):
    """Re-render report.html (and figures) of a run directory from its records and summary."""
    _setup_logging()
    from iclft.registry import rerender
    from iclft.report.figures import png_too

    subs = study_dirs(run_dir)
    with png_too(png):
        if not (run_dir / "summary.json").is_file() and subs:  # a `run all` directory: every study, then the index
            from iclft.report.index import write_index

            for path in subs.values():
                rerender(path)
            typer.echo(f"report: {write_index(run_dir, subs)}")
            return
        typer.echo(f"report: {rerender(run_dir)}")


@app.command()
@user_errors
def tasks(name: str | None = typer.Argument(None, help="a task name or task file to check and show")):
    """List the tasks iclft knows (name, description [source]); with NAME, load that task and show its config, split
    sizes and a prompt."""
    from iclft.tasks import TASKS, describe

    if name is not None:
        for part in describe(name):  # the config first: shown even when loading the task then fails
            typer.echo(part)
        return
    for entry in TASKS.values():
        typer.echo(f"{entry.shown:24s} {entry.help}")


@models_app.command("list")
@user_errors
def models_list():
    """Supported architecture families and the built-in model."""
    from iclft.models.families import FAMILIES
    from iclft.models.load import BUILTIN_DIR, builtin_available

    state = "shipped" if builtin_available() else "NOT shipped: a random stand-in is used"
    typer.echo(f"builtin  {BUILTIN_DIR} ({state})")
    for fam in FAMILIES.values():
        types, targets = ", ".join(fam.model_types), ", ".join(fam.lora_targets)
        typer.echo(f"family {fam.name:9s} model_type: {types:22s} LoRA: {targets}")


@models_app.command("eval")
@user_errors
def models_eval(
    name: str = typer.Argument("builtin"),
    quick: bool = typer.Option(False, "--quick", help="fewer queries and seeds"),
    size: str = typer.Option("paper", "--size", help="implicit item size: paper | small (SIZE_SMALL)"),
):
    """Ability table of a model (ICL, flipped labels, implicit patterns, LoRA) with 95% CIs."""
    _setup_logging()
    from iclft.builtin import abilities
    from iclft.models.load import BUILTIN_DIR, builtin_available

    if name == "builtin":
        if not builtin_available():
            raise UserError("no built-in model is shipped in this install")
        name = str(BUILTIN_DIR)
    if size not in ("paper", "small"):
        raise UserError(f"--size must be paper or small, not {size!r}")
    rows = abilities.ability_table(name, quick=quick, size=size)
    typer.echo(abilities.format_table(rows))


@app.command()
@user_errors
def pretrain(
    out: Path = typer.Option(..., "--out", help="output directory (rerun to resume)"),
    seed: int = typer.Option(0, "--seed"),
    minutes: float = typer.Option(90.0, "--minutes", help="wall-clock cap of this invocation (rerun to resume)"),
):
    """Reproduce the built-in model from a seed (CPU, resumable)."""
    _setup_logging()
    import json

    from iclft.builtin.pretrain import pretrain as run_pretrain

    final = run_pretrain(out, seed=seed, minutes=minutes)
    meta_file = final / "pretrain_meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if not meta.get("complete"):
        typer.echo(f"incomplete: stopped at step {meta.get('step', '?')} by the --minutes {minutes:g} cap; rerun the "
                   "same command to resume (the model below is a snapshot, not the finished model)", err=True)
    typer.echo(f"model: {final}")


@app.command()
@user_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="small sizes and a small deep model: a smoke test"),
    peers: bool = typer.Option(False, "--peers", help="iclft next to HF, TransformerLens and nnsight (capture, "
                               "head patching, shared-prefix scoring); needs iclft\\[bench]"),
    out: Path | None = typer.Option(None, "--out", help="also save the table (rows, sizes, models) as JSON"),
):
    """Every fast path vs the slow way it replaces, measured side by side in one run: one table of ratios."""
    _setup_logging()
    import json

    if peers:
        from iclft.bench_peers import format_peers, require_peers, run_peers

        require_peers()
        result = run_peers("quick" if quick else "default", log=typer.echo)
        typer.echo(f"{result['versions']}, {result['torch_threads']} thread(s), total {result['wall_s']:.0f} s\n")
        typer.echo(format_peers(result["rows"]))
    else:
        from iclft.bench import format_table, run_bench

        result = run_bench("quick" if quick else "default", log=typer.echo)
        typer.echo(f"torch {result['torch']}, {result['torch_threads']} thread(s), total {result['wall_s']:.0f} s\n")
        typer.echo(format_table(result["rows"]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        typer.echo(f"table: {out}")


def main():  # pragma: no cover
    sys.exit(app())
