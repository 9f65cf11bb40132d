"""`iclft` command line. Input errors print one line and exit with code 2."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import typer

from iclft import UserError

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning threads slow torch badly.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Does ICL change a model the way fine-tuning does?")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect and evaluate models.")
app.add_typer(models_app, name="models")

STUDIES = ("convergence", "dual", "implicit", "all")


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
    import transformers

    transformers.logging.set_verbosity_error()


@app.command()
@user_errors
def run(
    study: str = typer.Argument(..., help=f"one of: {', '.join(STUDIES)}"),
    out: Path = typer.Option(..., "--out", help="run directory (rerun the same command to resume)"),
    spec: Path | None = typer.Option(None, "--spec", help="YAML spec; fields override the defaults"),
    quick: bool = typer.Option(False, "--quick", help="tiny preset (a minute or two) for tests and CI"),
    preset: str = typer.Option("default", "--preset", help="default (laptop-sized) | paper (the papers' scale) | "
                               "quick (same as --quick)"),
    model: str | None = typer.Option(None, "--model", help="'builtin', a hub id or a local path"),
    seeds: int | None = typer.Option(None, "--seeds", help="number of seeds"),
    pad_token: str | None = typer.Option(None, "--pad-token", help="pad token if the tokenizer lacks one"),
):
    """Run a study into OUT: records.parquet, summary.json, figures/, report.html, manifest.json."""
    _setup_logging()
    if study not in STUDIES:
        raise UserError(f"unknown study {study!r}; choose one of {', '.join(STUDIES)}")
    overrides = dict(model=model, seeds=seeds, pad_token=pad_token)
    from iclft.studies import PRESETS, REGISTRY

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    preset = "quick" if quick else preset
    if study == "all":
        from iclft.report.index import write_index

        # every study's spec is checked before the first unit of any study runs
        specs = {name: _spec(name, spec, preset, overrides, section=name) for name in REGISTRY}
        paths = {name: REGISTRY[name][2](specs[name], out / name) for name in REGISTRY}
        index = write_index(out, paths)
        typer.echo(f"report: {index}")
        return
    path = REGISTRY[study][2](_spec(study, spec, preset, overrides), out)
    typer.echo(f"report: {path / 'report.html'}")


def _spec(study: str, spec_path, preset: str, overrides: dict, section: str | None = None):
    from iclft.studies import REGISTRY
    from iclft.studies.common import load_spec

    spec_cls, presets, _ = REGISTRY[study]
    return load_spec(spec_cls, spec_path, overrides, preset=presets.get(preset), section=section)


@app.command()
@user_errors
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")):
    """Re-render report.html (and figures) of a run directory from its records and summary."""
    _setup_logging()
    from iclft.report.index import rerender

    typer.echo(f"report: {rerender(run_dir)}")


@app.command()
@user_errors
def tasks():
    """List the tasks iclft knows."""
    from iclft.tasks import BUILTIN

    for name, desc in BUILTIN.items():
        typer.echo(f"{name:24s} {desc}")


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
):
    """Ability table of a model (ICL, flipped labels, implicit patterns, LoRA) with 95% CIs."""
    _setup_logging()
    from iclft.models import abilities
    from iclft.models.load import BUILTIN_DIR, builtin_available

    if name == "builtin":
        if not builtin_available():
            raise UserError("no built-in model is shipped in this install")
        name = str(BUILTIN_DIR)
    rows = abilities.ability_table(name, quick=quick)
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
    from iclft.models.pretrain import pretrain as run_pretrain

    typer.echo(f"model: {run_pretrain(out, seed=seed, minutes=minutes)}")


@app.command()
@user_errors
def bench(
    quick: bool = typer.Option(False, "--quick", help="small sizes and a small deep model: a smoke test"),
    out: Path | None = typer.Option(None, "--out", help="also save the table (rows, sizes, models) as JSON"),
):
    """Every fast path vs the slow way it replaces, measured side by side in one run: one table of ratios."""
    _setup_logging()
    import json

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
