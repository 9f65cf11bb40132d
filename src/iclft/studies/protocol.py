"""What a study is, and the one way every study runs.

A study declares its spec, presets and five functions; `prepare` sets a run up and `iclft.sweep.run_cells`
does the rest on any executor (run directory, resume, shards, records, summary, report, manifest).
`run_unit` must depend only on the spec, the unit's params and the context, so that units can run in any
order, in any process that built the same context: that is what lets an executor (local processes, or Ray
workers that each build their own context) run them anywhere.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from iclft import rundir
from iclft.studies.common import RunSpec


@dataclass(frozen=True)
class Unit:
    """One piece of a study's work: its shard is written atomically when it finishes, so a rerun skips it."""

    id: str  # file-name safe, unique within a run
    params: dict = field(default_factory=dict, hash=False, compare=False)
    # Units of one group run on one worker, in order, where the executor can: a later unit may reuse what an
    # earlier one left in that process (a trained model). Results never depend on it, only the time.
    group: str | None = field(default=None, hash=False, compare=False)


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
    units: Callable[[RunSpec, Context], list[Unit]]  # the same units for every seed (`prepare` counts on it)
    run_unit: Callable[[RunSpec, Context, Unit], pd.DataFrame]
    # summarise(records, spec, model_info): everything the report shows, JSON-ready
    summarise: Callable[[pd.DataFrame, RunSpec, dict], dict]
    # examples(spec, context) -> {setting: [token ids, ...]}: two prompts per setting, for the report
    examples: Callable[[RunSpec, Context], dict[str, list[list[int]]]] | None = None
    # manifest(spec, summary) -> study-specific manifest fields
    manifest: Callable[[RunSpec, dict], dict] | None = None
    render: Render | None = None  # set by iclft.registry: studies do not import reports

    def rendered_by(self, render: Render) -> Study:
        return dataclasses.replace(self, render=render)


@dataclass
class Cell:
    """One run directory in the making: a study, its spec, where it goes, and what set-up found."""

    study: Study
    spec: RunSpec
    out: Path
    units: list[Unit]
    info: dict  # the model's description (hash, family, size)
    examples: dict
    context: Any  # None once dropped (remote executors and sweeps build their own)
    started: float
    skipped: dict = field(default_factory=dict)  # inputs set-up skipped as too long for the context (manifest)


def prepare(study: Study, spec: RunSpec, out: Path, keep_context: bool = True) -> Cell:
    """Set-up of one run: load, check every input, list the units. Nothing is written yet.

    Without `keep_context` (remote workers build their own), a driver with no GPU sets up a `cuda` spec on the CPU:
    units, examples and the model's identity do not depend on the device.
    """
    started = time.time()
    on_driver = spec
    if not keep_context and str(spec.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            on_driver = spec.model_copy(update={"device": "cpu"})
    context = study.setup(on_driver)
    # units are the same for every seed: count them on one seed before listing them all
    rundir.check_size(study.name, len(study.units(spec.model_copy(update={"seeds": 1}), context)) * spec.seeds, out)
    units = study.units(spec, context)
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{study.name}: unit ids must be unique")
    tok = context.loaded.tokenizer if study.examples is not None else None
    examples = ({k: [tok.convert_ids_to_tokens(list(ids)) for ids in v]
                 for k, v in study.examples(spec, context).items()} if tok is not None else {})
    info = {**context.loaded.info, "device": spec.device}
    skipped = dict(getattr(context, "skipped", None) or {})
    if any(v for k, v in skipped.items() if k != "token_cap"):
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if k != "token_cap" and v)
        print(f"note: {study.name}: skipped {counts} example(s) longer than {skipped['token_cap']} tokens: with them "
              "some prompt of the run would not fit the model's context (counted in manifest.json)", file=sys.stderr)
    cell = Cell(study, spec, Path(out), units, info, examples, context, started, skipped)
    if not keep_context:
        cell.context = None
        gc.collect()
    return cell
