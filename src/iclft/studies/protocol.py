"""What a study is, and the one way every study runs.

A study declares its spec, presets and five functions; `run_study` does the rest (run directory, resume,
shards, records, summary, report, manifest). `run_unit` must depend only on the spec, the unit's params and
the context, so that units can run in any order, in any process that built the same context.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from iclft import rundir
from iclft.studies.common import RunSpec
from iclft.sweep import Unit, run_units


class Context(Protocol):
    """What `setup` returns: at least the loaded model; the rest (tasks, prompt builders, ...) is the study's."""

    loaded: Any


# render(out, records, summary, spec, model_info) -> path of report.html
Render = Callable[[Path, pd.DataFrame, dict, RunSpec, dict], Path]


@dataclass(frozen=True)
class Study:
    name: str
    spec: type[RunSpec]
    presets: dict[str, dict]  # "quick" and "paper", over the class defaults ("default")
    # Loads the model and whatever every unit needs, and checks every input, before OUT is touched.
    setup: Callable[[RunSpec], Context]
    units: Callable[[RunSpec, Context], list[Unit]]
    run_unit: Callable[[RunSpec, Context, Unit], pd.DataFrame]
    # summarise(records, spec, model_info): everything the report shows, JSON-ready
    summarise: Callable[[pd.DataFrame, RunSpec, dict], dict]
    # examples(spec, context) -> {setting: [token ids, ...]}: two prompts per setting, for the report
    examples: Callable[[RunSpec, Context], dict[str, list[list[int]]]] | None = None
    # manifest(spec, context, summary) -> study-specific manifest fields
    manifest: Callable[[RunSpec, Context, dict], dict] | None = None
    render: Render | None = None  # set by iclft.registry: studies do not import reports

    def rendered_by(self, render: Render) -> Study:
        return dataclasses.replace(self, render=render)


def run_study(study: Study, spec: RunSpec, out: Path) -> Path:
    """Run (or resume) `study` into OUT; returns OUT."""
    started = time.time()
    context = study.setup(spec)
    units = study.units(spec, context)
    info = context.loaded.info
    with rundir.open_run(out, spec, rundir.identity(info)) as out:
        if study.examples is not None:
            tok = context.loaded.tokenizer
            rundir.write_examples(out, {k: [tok.convert_ids_to_tokens(list(ids)) for ids in v]
                                        for k, v in study.examples(spec, context).items()})
        records = run_units(units, lambda unit: study.run_unit(spec, context, unit), rundir.shard_dir(out),
                            desc=study.name)
        rundir.write_records(out, records)
        summary = study.summarise(records, spec, info)
        rundir.write_summary(out, summary)
        if study.render is not None:
            study.render(out, records, summary, spec, info)
        extra = {"study": study.name, "units": len(units),
                 **(study.manifest(spec, context, summary) if study.manifest else {})}
        rundir.write_manifest(out, rundir.manifest(spec, info, started, extra))
    return out
