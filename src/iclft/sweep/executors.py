"""Executors: where units run. `local` runs them in this process, in order; `ray` runs them on Ray actors that
each load the model once per study spec and return records to the driver, which writes every shard itself (no
shared filesystem needed).

Both take the same jobs and call the same `on_result` as each unit finishes. A unit is a pure function of
(study, spec, unit), so records do not depend on the executor, the number of workers or the order units
finish in: the driver always assembles them in unit order.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from iclft import UserError, quiet_libraries
from iclft.studies.protocol import Unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    cell: str  # which run directory the unit belongs to (one per study × model × overrides)
    setup: Callable  # the study's setup and run_unit: module-level functions pickle by reference to workers
    run_unit: Callable
    spec: Any  # the study's effective spec (a pydantic model: pickles to workers as is)
    unit: Unit


OnResult = Callable[[Job, pd.DataFrame], None]


@dataclass
class LocalExecutor:
    """This machine. One worker: each job runs in this process with the context the driver already built
    (`contexts[cell]`, rebuilt one at a time where a sweep dropped it). More workers: that many spawned
    processes, each with its share of the CPU threads, each building a cell's context once (small models on
    CPU: two single-threaded processes do ~1.5x the work of one two-threaded one)."""

    contexts: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    name: str = "local"

    def map(self, jobs: Sequence[Job], on_result: OnResult) -> dict:
        if self.workers > 1 and len(jobs) > 1:
            self._pool(jobs, on_result)
        else:
            current = None
            for job in jobs:
                if self.contexts.get(job.cell) is None:  # dropped after set-up (sweeps): rebuild, one at a time
                    self.contexts.pop(current, None)
                    gc.collect()
                    self.contexts[job.cell] = job.setup(job.spec)
                current = job.cell
                on_result(job, job.run_unit(job.spec, self.contexts[job.cell], job.unit))
        return {"executor": self.name, "workers": self.workers}

    def _pool(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        spawn = multiprocessing.get_context("spawn")
        # one single-process pool per worker, so that the queue can choose which worker runs which unit
        pools = [ProcessPoolExecutor(1, mp_context=spawn, initializer=_pool_init, initargs=(threads,))
                 for _ in range(self.workers)]
        queue = _Queue(jobs)
        cell_of: dict[int, str | None] = dict.fromkeys(range(self.workers))
        running: dict = {}  # future -> (worker, job)
        try:
            idle = list(range(self.workers))
            while queue.pending or running:
                while idle and queue.pending:
                    w = idle.pop(0)
                    job = queue.take(w, cell_of[w])
                    running[pools[w].submit(_pool_run, job)] = (w, job)
                    cell_of[w] = job.cell
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    w, job = running.pop(fut)
                    on_result(job, fut.result())
                    idle.append(w)
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)


class _Queue:
    """Which unit a free worker takes next: the rest of a group it started; else, preferring the cell whose
    context it holds, a unit whose group no worker has started; else (the end of a run) any unit."""

    def __init__(self, jobs: Sequence[Job]):
        self.pending = list(jobs)
        self.owner: dict = {}  # (cell, group) -> worker

    @staticmethod
    def _group(job: Job):
        return None if job.unit.group is None else (job.cell, job.unit.group)

    def take(self, worker, cell: str | None) -> Job:
        def free(j):
            return self._group(j) is None or self._group(j) not in self.owner

        for want in (lambda j: self._group(j) is not None and self.owner.get(self._group(j)) == worker,
                     lambda j: free(j) and j.cell == cell, free, lambda j: True):
            i = next((i for i, j in enumerate(self.pending) if want(j)), None)
            if i is not None:
                job = self.pending.pop(i)
                if self._group(job) is not None:
                    self.owner.setdefault(self._group(job), worker)
                return job
        raise IndexError("no pending units")

    def put_back(self, job: Job) -> None:
        self.pending.insert(0, job)


_WORKER: dict = {}  # in a worker process: the cell whose context it holds, and that context


def _pool_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    quiet_libraries()


def _pool_run(job: Job) -> pd.DataFrame:
    if _WORKER.get("cell") != job.cell:  # one context at a time
        _WORKER.clear()
        gc.collect()
        _WORKER.update(cell=job.cell, context=job.setup(job.spec))
    return job.run_unit(job.spec, _WORKER["context"], job.unit)


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'iclft[ray]'") from None
    return ray


class _Worker:
    """A Ray actor: builds a study's context (model, tasks, prompt builders) once per cell and runs its units;
    one context at a time (a 7B model per worker is what fits)."""

    def __init__(self, threads: int):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _pool_init(threads)

    def run(self, job: Job) -> pd.DataFrame:
        return _pool_run(job)


@dataclass
class RayExecutor:
    """Units on Ray actors.

    `address`: None starts a local Ray instance; "auto" or HOST:PORT joins a running cluster. Each of `workers`
    actors (default: as many as the cluster's CPUs or GPUs allow) holds `gpus_per_worker` GPUs and
    `cpus_per_worker` CPUs. A worker that dies (OOM, node lost, kill) is restarted by Ray and its unit is sent
    again, up to `retries` times per unit; the retries are counted in the manifest.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    retries: int = 2
    name: str = "ray"

    def _actors(self, ray) -> list:
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        res = ray.cluster_resources()
        fit = int(res.get("CPU", 1) // max(self.cpus_per_worker, 1e-9))
        if self.gpus_per_worker:
            fit = min(fit, int(res.get("GPU", 0) // self.gpus_per_worker))
            if fit < 1:
                raise UserError(f"the Ray cluster has {res.get('GPU', 0):g} GPUs; "
                                f"--gpus-per-worker {self.gpus_per_worker:g} fits no worker")
        n = max(1, min(self.workers or fit, fit or 1))
        cls = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=-1,
                         max_task_retries=0)(_Worker)
        return [cls.remote(max(1, int(self.cpus_per_worker))) for _ in range(n)]

    def map(self, jobs: Sequence[Job], on_result: OnResult) -> dict:
        ray = _ray()
        actors = self._actors(ray) if jobs else []
        cell_of = dict.fromkeys(range(len(actors)))  # the cell whose context each actor holds
        queue = _Queue(jobs)
        running: dict = {}  # object ref -> (actor index, job)
        retries: Counter = Counter()
        idle = list(range(len(actors)))
        try:
            while queue.pending or running:
                while idle and queue.pending:
                    w = idle.pop(0)
                    job = queue.take(w, cell_of[w])
                    running[actors[w].run.remote(job)] = (w, job)
                    cell_of[w] = job.cell
                ready, _ = ray.wait(list(running), num_returns=1)
                w, job = running.pop(ready[0])
                try:
                    df = ray.get(ready[0])
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    key = (job.cell, job.unit.id)
                    retries[key] += 1
                    if retries[key] > self.retries:
                        raise RuntimeError(f"unit {job.unit.id} lost its worker {retries[key]} times; "
                                           f"giving up (--retries {self.retries})") from exc
                    log.warning("worker died running %s (%s); retrying", job.unit.id, type(exc).__name__)
                    queue.put_back(job)
                    cell_of[w] = None  # Ray restarts the actor, with no context
                    idle.append(w)
                    continue
                except ray.exceptions.RayTaskError as exc:  # the unit itself failed: the same error as locally
                    raise exc.as_instanceof_cause() from None
                on_result(job, df)
                idle.append(w)
        finally:
            for actor in actors:
                ray.kill(actor)
        return {"executor": self.name, "ray_address": self.address, "workers": len(actors),
                "gpus_per_worker": self.gpus_per_worker, "cpus_per_worker": self.cpus_per_worker,
                "retries_allowed": self.retries, "retries": dict(retries)}  # {(cell, unit id): times re-sent}


def make_executor(name: str, workers: int | None = None, **options) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor(workers=workers or 1)
    if name == "ray":
        _ray()
        return RayExecutor(workers=workers, **{k: v for k, v in options.items() if v is not None})
    raise UserError(f"unknown executor {name!r}; choose local or ray")
