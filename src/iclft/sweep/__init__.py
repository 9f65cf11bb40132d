"""Where a study's units run, and a run directory's driver-side files (shards, records, summary, report,
manifest). Every unit writes its own shard atomically as it finishes, so a rerun after a kill skips finished
units; rows come back in unit order regardless of which units were resumed or where they ran, so a resumed
or distributed run equals an uninterrupted local one row for row.

    run_cells(cells, executor)   many runs' units scheduled together (`run all`, sweeps)
    run_study(study, spec, out)  one run
    run(name, spec, out)         one run of a registered study
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from iclft import UserError, rundir
from iclft.studies.common import RunSpec
from iclft.studies.protocol import Cell, Study, prepare
from iclft.sweep.executors import Job, LocalExecutor


def run_cells(cells: Sequence[Cell], executor=None, desc: str | None = None) -> list[Path]:
    """Run (or resume) every cell's units together on one executor; each cell's driver-side files (shards,
    records, summary, report, manifest) are written here, atomically, as results arrive."""
    executor = executor or LocalExecutor()
    keys = [str(c.out) for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("two cells share a run directory")
    if isinstance(executor, LocalExecutor):
        executor.contexts.update({k: c.context for k, c in zip(keys, cells, strict=True) if c.context is not None})
    with ExitStack() as stack:
        for cell in cells:
            stack.enter_context(rundir.open_run(cell.out, cell.spec, rundir.identity(cell.info, cell.spec)))
            if cell.examples:
                rundir.write_examples(cell.out, cell.examples)
        jobs = [Job(key, c.study.setup, c.study.run_unit, c.spec, u) for key, c in zip(keys, cells, strict=True)
                for u in _to_run(c)]
        total = sum(len(c.units) for c in cells)
        label = desc or (cells[0].study.name if len(cells) == 1 else "units")
        with _progress(total, total - len(jobs), label) as bar:
            by_key = dict(zip(keys, cells, strict=True))

            def on_result(job: Job, df: pd.DataFrame) -> None:
                df.insert(0, "unit", job.unit.id)
                rundir.write_shard(by_key[job.cell].out, job.unit.id, df)
                bar.update(1)

            stats = executor.map(jobs, on_result) if jobs else {"executor": getattr(executor, "name", "local")}
        ran = {j.cell for j in jobs}
        for key, cell in zip(keys, cells, strict=True):
            if key in ran or not _finished(cell):
                _finish(cell, stats, rerun=key not in ran)
    return [c.out for c in cells]


class _Lines:
    """Progress for a stderr that is not an interactive terminal (a notebook, nohup, CI, a `script` pty): a plain
    line every ~5 % of the units or 60 s -- units done / total, elapsed, ETA -- where a bar would draw nothing."""

    def __init__(self, total: int, initial: int, label: str, every_s: float = 60.0):
        self.total, self.done, self.label, self.every_s = total, initial, label, every_s
        self.start, self.initial = time.monotonic(), initial
        self.step = max(1, -(-total // 20))
        self.last_t, self.last_done = self.start, initial
        self._say()

    def _say(self) -> None:
        elapsed = time.monotonic() - self.start
        ran = self.done - self.initial
        eta = f", ETA {_clock(elapsed / ran * (self.total - self.done))}" if ran and self.done < self.total else ""
        print(f"{self.label}: {self.done}/{self.total} units ({100 * self.done / max(self.total, 1):.0f}%), "
              f"elapsed {_clock(elapsed)}{eta}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or self.done - self.last_done >= self.step or now - self.last_t >= self.every_s:
            self.last_t, self.last_done = now, self.done
            self._say()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _progress(total: int, initial: int, label: str):
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=label, unit="unit", dynamic_ncols=True)
    return _Lines(total, initial, label)


def _to_run(cell: Cell) -> list:
    """The cell's units without a finished shard. A shard that fails its checksum (truncated, overwritten) is
    reported in one line and computed again."""
    states = {u.id: rundir.shard_state(cell.out, u.id) for u in cell.units}
    bad = [uid for uid, state in states.items() if state == "bad"]
    if bad:
        print(f"note: {cell.out}: {len(bad)} shard(s) failed their checksum and are recomputed: "
              f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
        for uid in bad:
            rundir.drop_shard(cell.out, uid)
    return [u for u in cell.units if states[u.id] != "done"]


def _finished(cell: Cell) -> bool:
    """Whether OUT already holds this cell's finished files, written after its last shard: a rerun with nothing to
    compute then leaves them as they are (rendering is most of a finished sweep's rerun; `iclft report` re-renders)."""
    out = cell.out
    files = [out / "records.parquet", out / "summary.json", out / rundir.FINISHED] + (
        [out / "report.html"] if cell.study.render else [])
    manifest = out / "manifest.json"
    if not manifest.is_file() or not all(f.is_file() for f in files):
        return False
    try:
        rundir.check_finished(out)
    except UserError:  # a file edited or damaged after the run: written again from the shards
        return False
    if not rundir.finished_by_this_code(out):  # other code (an update, a new checkout) summarised and rendered it
        return False
    newest = max((f.stat().st_mtime_ns for f in rundir.shard_dir(out).glob("*.parquet")), default=0)
    return manifest.stat().st_mtime_ns >= newest


def _finish(cell: Cell, stats: dict, rerun: bool = False) -> None:
    study, spec, out = cell.study, cell.spec, cell.out
    records = pd.concat([pd.read_parquet(rundir.shard_path(out, u.id)) for u in cell.units], ignore_index=True)
    rundir.write_records(out, records)
    summary = study.summarise(records, spec, cell.info)
    rundir.write_summary(out, summary)
    if study.render is not None:
        study.render(out, records, summary, spec, cell.info)
    extra = {"study": study.name, "units": len(cell.units)}
    if cell.skipped:
        extra["skipped_too_long"] = cell.skipped
    if study.manifest is not None:
        extra.update(study.manifest(spec, summary))
    retries = {unit: n for (key, unit), n in stats.get("retries", {}).items() if key == str(out)}
    extra["executor"] = {**{k: v for k, v in stats.items() if k != "retries"},
                         **({"retries": retries} if "retries" in stats else {})}
    manifest = rundir.manifest(spec, cell.info, cell.started, extra)
    old = out / "manifest.json"
    if rerun and old.is_file():  # nothing ran: keep the time the run took, say when it was re-rendered
        try:
            before = json.loads(old.read_text(encoding="utf-8"))
            manifest.update(wall_time_s=before["wall_time_s"], finished_at=before["finished_at"],
                            executor=before.get("executor", manifest["executor"]),
                            rerendered_at=manifest["finished_at"])
        except (ValueError, KeyError):
            pass
    rundir.write_manifest(out, manifest)
    rundir.write_finished(out)


def render_once(page: Path, runs: Sequence[Path], render: Callable[[], Path]) -> Path:
    """`render()` a page drawn from several finished runs (a sweep's index) unless this code already drew it from
    the same runs' files (their finished.json, which holds every input's checksum): a rerun that computed nothing
    leaves it and its figures as they are."""
    page = Path(page)
    stamp = page.with_name(f".{page.name}.sha256")
    h = hashlib.sha256(rundir.code_sha256().encode())
    for run in runs:
        done = Path(run) / rundir.FINISHED
        h.update(str(run).encode() + b"\0" + (done.read_bytes() if done.is_file() else b"") + b"\0")
    try:
        if page.is_file() and stamp.read_text(encoding="utf-8").strip() == h.hexdigest():
            return page
    except OSError:  # no stamp yet
        pass
    path = render()
    rundir.atomic_write_text(stamp, h.hexdigest() + "\n")
    return path


def run_study(study: Study, spec: RunSpec, out: Path, executor=None) -> Path:
    """Run (or resume) `study` into OUT; returns OUT."""
    return run_cells([prepare(study, spec, out)], executor)[0]


def run(name: str, spec, out: Path, executor=None) -> Path:
    """Run (or resume) the registered study called `name` into OUT."""
    from iclft.registry import get_study

    return run_study(get_study(name), spec, out, executor)
