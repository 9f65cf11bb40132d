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
import signal
import sys
import threading
import time
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
    CPU: two single-threaded processes do ~1.5x the work of one two-threaded one).

    A worker process that dies (OOM killer, kill, crash) is replaced and its unit sent again, up to `retries`
    times per unit; the retries are counted in the manifest. In this process (one worker) a crash is the
    driver's own, so `retries` does not apply there. Workers die with the driver however it ends (Ctrl-C,
    SIGTERM, kill -9); finished units' shards are kept, and rerunning the same command resumes.
    """

    contexts: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    retries: int = 2
    name: str = "local"

    def map(self, jobs: Sequence[Job], on_result: OnResult) -> dict:
        retries: Counter = Counter()
        if self.workers > 1 and len(jobs) > 1:
            self._pool(jobs, on_result, retries)
        else:
            current = None
            for job in jobs:
                try:
                    if self.contexts.get(job.cell) is None:  # dropped after set-up (sweeps): rebuild, one at a time
                        self.contexts.pop(current, None)
                        gc.collect()
                        self.contexts[job.cell] = job.setup(job.spec)
                    current = job.cell
                    df = job.run_unit(job.spec, self.contexts[job.cell], job.unit)
                except KeyboardInterrupt:
                    _stopping(1)
                    raise
                on_result(job, df)
        stats = {"executor": self.name, "workers": self.workers}
        if self.workers > 1:
            stats.update(retries_allowed=self.retries, retries=dict(retries))  # {(cell, unit id): times re-sent}
        return stats

    def _pool(self, jobs: Sequence[Job], on_result: OnResult, retries: Counter) -> None:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        spawn = multiprocessing.get_context("spawn")

        def new_pool():
            return ProcessPoolExecutor(1, mp_context=spawn, initializer=_pool_init, initargs=(threads, os.getpid()))

        # one single-process pool per worker, so that the queue can choose which worker runs which unit, and a
        # worker's death breaks only its own pool
        pools = [new_pool() for _ in range(self.workers)]
        queue = _Queue(jobs)
        cell_of: dict[int, str | None] = dict.fromkeys(range(self.workers))
        running: dict = {}  # future -> (worker, job)

        def replace(w: int) -> None:  # worker w's process died: a fresh one, with no context yet
            pools[w].shutdown(wait=False)
            pools[w] = new_pool()
            cell_of[w] = None

        finished = False
        try:
            idle = list(range(self.workers))
            while queue.pending or running:
                while idle and queue.pending:
                    w = idle.pop(0)
                    job = queue.take(w, cell_of[w])
                    try:
                        fut = pools[w].submit(_pool_run, job)
                    except BrokenProcessPool:  # it died between units (OOM killer): the unit has not run yet
                        replace(w)
                        fut = pools[w].submit(_pool_run, job)
                    running[fut] = (w, job)
                    cell_of[w] = job.cell
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    w, job = running.pop(fut)
                    try:
                        df = fut.result()
                    except BrokenProcessPool as exc:  # it died running the unit: a fresh one takes it again
                        _count_retry(retries, job, self.retries, exc)
                        replace(w)
                        queue.put_back(job)
                        idle.append(w)
                        continue
                    on_result(job, df)
                    idle.append(w)
            finished = True
        except KeyboardInterrupt:
            _stopping(len(running))
            raise
        finally:
            for pool in pools:
                if not finished:  # an error or Ctrl-C: units still running would be discarded, so do not wait
                    _kill(pool)
                pool.shutdown(wait=True, cancel_futures=True)


def _stopping(in_flight: int) -> None:
    """Ctrl-C: say what is lost and how to resume (the run then stops at once instead of finishing its units)."""
    from tqdm.auto import tqdm

    units = "1 unit in flight is" if in_flight == 1 else f"{in_flight} units in flight are"
    tqdm.write(f"stopping: {units} discarded; rerun the same command to resume", file=sys.stderr)


def _count_retry(retries: Counter, job: Job, allowed: int, exc: BaseException) -> None:
    key = (job.cell, job.unit.id)
    retries[key] += 1
    if retries[key] > allowed:
        raise RuntimeError(f"unit {job.unit.id} lost its worker {retries[key]} times; "
                           f"giving up (--retries {allowed})") from exc
    log.warning("worker died running %s (%s); retrying", job.unit.id, type(exc).__name__)


def _kill(pool) -> None:
    """SIGKILL a pool's worker process now (a pool offers no public handle on its processes)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.kill()


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


def _pool_init(threads: int, driver: int | None = None) -> None:
    if driver is not None:  # a local worker process (not a Ray actor)
        _die_with(driver)
        # Ctrl-C in a terminal reaches the whole process group: the driver alone decides (it kills its workers)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # tqdm gives a process a multiprocessing lock with its first bar, a named semaphore that the resource
        # tracker reports as leaked once the worker is killed; a worker's bars share a lock with no process
        from tqdm.std import TqdmDefaultWriteLock

        TqdmDefaultWriteLock.mp_lock = None
    import torch

    torch.set_num_threads(threads)
    quiet_libraries()


def _die_with(driver: int) -> None:
    """End this worker process when the driver dies, however it dies: kill -9 and SIGTERM run no clean-up in
    the driver, and an orphaned worker would hold its memory (a model) for as long as its unit runs. Linux
    sends the signal we ask for when the parent dies; elsewhere a thread watches for a new parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    else:
        def watch():
            while os.getppid() == driver:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != driver:  # the driver died before the signal was asked for
        os._exit(1)


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

    def ready(self) -> int:
        """Answers once the actor is up (after a restart too); returns its process id."""
        return os.getpid()


@dataclass
class RayExecutor:
    """Units on Ray actors.

    `address`: None starts a local Ray instance; "auto" or HOST:PORT joins a running cluster. Each of `workers`
    actors (default: as many as the cluster's CPUs or GPUs allow) holds `gpus_per_worker` GPUs and
    `cpus_per_worker` CPUs. A worker that dies (OOM, node lost, kill) is restarted by Ray and its unit is sent
    again, up to `retries` times per unit; the retries are counted in the manifest. A restarting worker gets
    no unit until it answers (probed with backoff); one that has not come back after `restart_wait_s` seconds
    is left out, and the run fails only when no worker is left.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    retries: int = 2
    restart_wait_s: float = 30.0
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
        running: dict = {}  # object ref -> (actor index, job; None for a readiness probe)
        retries: Counter = Counter()
        idle = list(range(len(actors)))
        # actors whose worker died: Ray restarts them, which takes seconds (a new process imports torch), and a
        # unit sent before then fails at once; so each is probed with exponential backoff until it answers
        down: dict[int, _Restart] = {}
        try:
            while queue.pending or any(job is not None for _, job in running.values()):
                now = time.monotonic()
                for w, r in down.items():
                    if not r.probing and now >= r.probe_at:
                        running[actors[w].ready.remote()] = (w, None)
                        r.probing = True
                while idle and queue.pending:
                    w = idle.pop(0)
                    job = queue.take(w, cell_of[w])
                    running[actors[w].run.remote(job)] = (w, job)
                    cell_of[w] = job.cell
                if not idle and not running and not down:
                    raise RuntimeError(f"every Ray worker is gone (none restarted within {self.restart_wait_s:g} s)")
                # wake up for the next probe that falls due, if any
                timeout = min((max(0.0, r.probe_at - now) for r in down.values() if not r.probing), default=None)
                if running:
                    ready = ray.wait(list(running), num_returns=1, timeout=timeout)[0]
                else:  # nothing runs: every worker is restarting
                    time.sleep(timeout)
                    ready = []
                if not ready:
                    continue
                w, job = running.pop(ready[0])
                try:
                    df = ray.get(ready[0])
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    if job is None:  # still restarting
                        if not down[w].backoff(self.restart_wait_s):
                            log.warning("Ray worker %d did not come back within %g s; going on without it",
                                        w, self.restart_wait_s)
                            del down[w]
                        continue
                    # the actor was up when it got the unit, so the unit's worker died (the error is often
                    # ActorUnavailableError while Ray restarts it)
                    _count_retry(retries, job, self.retries, exc)
                    queue.put_back(job)
                    cell_of[w] = None  # Ray restarts the actor, with no context
                    down[w] = _Restart(time.monotonic())
                    continue
                except ray.exceptions.RayTaskError as exc:  # the unit itself failed: the same error as locally
                    raise exc.as_instanceof_cause() from None
                if job is None:  # restarted
                    del down[w]
                else:
                    on_result(job, df)
                idle.append(w)
        except KeyboardInterrupt:
            _stopping(sum(job is not None for _, job in running.values()))
            raise
        finally:
            for actor in actors:
                ray.kill(actor)
        return {"executor": self.name, "ray_address": self.address, "workers": len(actors),
                "gpus_per_worker": self.gpus_per_worker, "cpus_per_worker": self.cpus_per_worker,
                "retries_allowed": self.retries, "retries": dict(retries)}  # {(cell, unit id): times re-sent}


@dataclass
class _Restart:
    """A Ray actor being restarted: when to probe it next (0.5 s after a failed probe, doubling)."""

    since: float
    probe_at: float = 0.0
    delay: float = 0.5
    probing: bool = False

    def backoff(self, patience: float) -> bool:
        """After a failed probe: schedule the next one; False once the actor has had `patience` seconds."""
        self.probing = False
        now = time.monotonic()
        if now - self.since > patience:
            return False
        self.probe_at = now + min(self.delay, self.since + patience - now)
        self.delay *= 2
        return True


def make_executor(name: str, workers: int | None = None, **options) -> LocalExecutor | RayExecutor:
    if name == "local":
        retries = options.get("retries")
        return LocalExecutor(workers=workers or 1, **({} if retries is None else {"retries": retries}))
    if name == "ray":
        _ray()
        return RayExecutor(workers=workers, **{k: v for k, v in options.items() if v is not None})
    raise UserError(f"unknown executor {name!r}; choose local or ray")
