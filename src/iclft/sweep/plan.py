"""`iclft sweep SWEEP.yaml`: a grid of models × studies (× named spec variants), one run directory per cell,
every cell's units scheduled together on one executor, resumable, with one index page comparing the cells.

    models: [builtin, Qwen/Qwen2.5-0.5B, /data/llama-7b]   # or {name: short, model: id-or-path}
    studies: [convergence, dual, implicit]                 # default: every study
    preset: default                                        # default | paper | quick
    spec:                                                  # fields for every cell, or per study section
      seeds: 10
      dual: {k: 16}
    variants:                                              # optional third axis
      - {name: r4,  set: {convergence: {lora: {adapter: {r: 4}}}}}
      - {name: r16, set: {convergence: {lora: {adapter: {r: 16}}}}}

Cells go to OUT/<model name>[__<variant>]/<study>.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iclft import UserError, rundir
from iclft.yamlfile import read_yaml

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a plain directory name: never `..`, `/abs` or `a/b`


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=NAME, description="short name: the cell directory and the comparison's column")
    model: str = Field(..., description="'builtin', a hub id or a local path")


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=NAME, description="short name, appended to the cell directory")
    set: dict = Field({}, description="spec fields over the sweep's spec (study sections allowed)")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelEntry] = Field(..., min_length=1, description="models: names or {name, model}")
    studies: list[str] | None = Field(None, description="studies to run on every model (default: all)")
    preset: str = Field("default", description="default | paper | quick")
    spec: dict = Field({}, description="spec fields for every cell; a mapping under a study's name is that study's")
    variants: list[Variant] = Field([], description="named spec variants: a third axis of the grid")

    @field_validator("models", mode="before")
    @classmethod
    def _names(cls, v):
        if not isinstance(v, list):
            return v
        return [{"name": _slug(m), "model": m} if isinstance(m, str) else m for m in v]


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name or model).strip("._-") or "model"


def load_sweep(path: Path) -> SweepSpec:
    data = read_yaml(path, "sweep file")
    if not isinstance(data, dict):
        raise UserError(f"sweep file {str(path)!r} must hold a mapping (models, studies, ...)")
    try:
        sweep = SweepSpec(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "sweep"
        raise UserError(f"invalid sweep field {loc!r}: {err['msg']}") from None
    names = [m.name for m in sweep.models]
    if len(set(names)) != len(names):
        raise UserError(f"sweep models need distinct names; got {names}")
    if len({v.name for v in sweep.variants}) != len(sweep.variants):
        raise UserError("sweep variants need distinct names")
    return sweep


def cells(sweep: SweepSpec, out: Path, quick: bool = False) -> list[tuple[str, object, Path]]:
    """[(study name, effective spec, cell directory)], every spec checked before anything runs."""
    from iclft.registry import STUDIES
    from iclft.studies import PRESETS
    from iclft.studies.common import load_spec, merge, study_section

    studies = sweep.studies or list(STUDIES)
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise UserError(f"unknown studies {unknown} in the sweep; choose from {', '.join(STUDIES)}")
    preset = "quick" if quick else sweep.preset
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")

    result = []
    for m in sweep.models:
        for variant in sweep.variants or [None]:
            name = m.name if variant is None else f"{m.name}__{variant.name}"
            for study in studies:
                over = merge(study_section(sweep.spec, study, STUDIES, "sweep spec"), {"model": m.model})
                if variant is not None:
                    over = merge(over, study_section(variant.set, study, STUDIES, f"sweep variant {variant.name!r}"))
                spec = load_spec(STUDIES[study].spec, None, over, preset=STUDIES[study].presets.get(preset))
                result.append((study, spec, rundir.within(out, name, study)))
    return result


def run_sweep(path: Path, out: Path, executor, quick: bool = False) -> Path:
    """Set up every cell (loading each model once per cell to check inputs), run all units together, then write
    OUT/index.html comparing the cells."""
    from iclft.registry import STUDIES
    from iclft.report.compare import write_compare
    from iclft.studies.protocol import prepare
    from iclft.sweep import render_once, run_cells

    sweep = load_sweep(path)
    plan = cells(sweep, out, quick)
    with rundir.open_root(out, "sweep"):
        prepared = [prepare(STUDIES[study], spec, cell_out, keep_context=False) for study, spec, cell_out in plan]
        paths = run_cells(prepared, executor, desc="sweep")
        return render_once(out / "index.html", paths, lambda: write_compare(
            out, paths, title="iclft sweep — models × studies", page="index.html"))
