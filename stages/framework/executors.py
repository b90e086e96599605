"""Executors: where quanta run — in this process, in a local process pool, or on Dask.

Each executor takes jobs (lists of :class:`~stages.framework.runner.QuantumSpec`, run in order in
one worker, see :func:`stages.framework.runner.run_job`) and hands back their
:class:`~stages.framework.runner.QuantumResult` lists as they finish. The workers of the pool and of Dask
open the repository themselves from its URL and storage options, so they can be anywhere that
reaches the storage (an S3 repository for a Dask cluster of many machines).

:func:`execute_graph` drives a run: a job is submitted as soon as every quantum outside it that
it depends on has finished (so warps start while other visits are still being processed, rather
than stage after stage), a few more than there are workers are kept in flight, ready jobs of
later stages go first (finishing patches early), a failing quantum does not stop independent
ones, and everything downstream of a failure is marked ``blocked``. The :class:`RunSummary` counts done, skipped,
failed (with each error) and blocked quanta.

A worker process that dies (killed, out of memory, a crash in C code) fails the jobs that were
running in the pool at that moment; the pool is then started again for the rest. Pool workers
use one BLAS thread each (:func:`prepare_worker_process`) and exit when the process that started
them dies.
"""

from __future__ import annotations

import abc
import concurrent.futures
import heapq
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from repo.errors import DrpError
from repo.repository import Repository

from .progress import Progress
from .quanta import Quantum, QuantumGraph
from .runner import QuantumResult, QuantumSpec, execute_job, make_spec, prepare_run, run_job

log = logging.getLogger(__name__)

#: Statuses a quantum can end a run with.
STATUSES = ("done", "skipped", "failed", "blocked")


#: A job: quanta run in order in one worker.
Job = list[QuantumSpec]


class Executor(abc.ABC):
    """Runs jobs of quanta and reports their results.

    Parameters
    ----------
    repo_url, storage_options
        Where the workers open the repository.
    """

    #: Jobs to keep submitted at once.
    capacity: int = 1

    def __init__(self, repo_url: str, storage_options: Mapping[str, Any] | None = None):
        self.repo_url = repo_url
        self.storage_options = dict(storage_options or {})

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Start running a job."""

    @abc.abstractmethod
    def wait(self) -> list[list[QuantumResult]]:
        """Block until at least one submitted job has finished; return the results of each job
        finished."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release workers; jobs not yet started are dropped."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """Runs each job in this process, one at a time (for debugging: breakpoints work)."""

    capacity = 1

    def __init__(
        self,
        repo_url: str,
        storage_options: Mapping[str, Any] | None = None,
        repo: Repository | None = None,
    ):
        super().__init__(repo_url, storage_options)
        self.repo = repo or Repository(repo_url, storage_options)
        self._queue: list[Job] = []

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def wait(self) -> list[list[QuantumResult]]:
        return [run_job(self.repo, self._queue.pop(0))]

    def close(self) -> None:
        self._queue.clear()


def prepare_worker_process(parent_pid: int) -> None:
    """Set up a worker process of a local pool (its initializer).

    * One BLAS thread: a pool runs one quantum per core already, and OpenBLAS's own threads on
      top of them oversubscribe the cores (spinning threads of two workers fitting at once made
      demo calibrate quanta take 1.2-3 s instead of 0.35 s; the mean fell from 0.68 to 0.34 s).
    * Exit when ``parent_pid`` is no longer the parent: a pool's workers must not outlive a
      ``drp`` process that was killed.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="exit-with-parent", daemon=True
    ).start()


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


class ProcessPoolExecutor(Executor):
    """A pool of ``workers`` local processes (started fresh, not forked)."""

    def __init__(
        self, repo_url: str, storage_options: Mapping[str, Any] | None = None, workers: int = 2
    ):
        super().__init__(repo_url, storage_options)
        self.workers = max(1, int(workers))
        self.capacity = 2 * self.workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._futures: dict[concurrent.futures.Future, Job] = {}

    def _ensure_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=prepare_worker_process,
                initargs=(os.getpid(),),
            )
        return self._pool

    def submit(self, job: Job) -> None:
        future = self._ensure_pool().submit(execute_job, job, self.repo_url, self.storage_options)
        self._futures[future] = job

    def wait(self) -> list[list[QuantumResult]]:
        done, _ = concurrent.futures.wait(
            list(self._futures), return_when=concurrent.futures.FIRST_COMPLETED
        )
        results = []
        broken = False
        for future in done:
            job = self._futures.pop(future)
            try:
                results.append(future.result())
            except concurrent.futures.process.BrokenProcessPool as exc:
                broken = True
                results.append(_lost(job, f"a worker process died ({exc})"))
            except Exception as exc:  # e.g. the spec or result could not be pickled
                results.append(_lost(job, f"{type(exc).__name__}: {exc}"))
        if broken and self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor(Executor):
    """Quanta as tasks of a Dask distributed cluster.

    Parameters
    ----------
    address
        Scheduler address (``tcp://host:8786``), or ``local`` to start a local cluster of
        ``workers`` processes with one thread each.
    """

    def __init__(
        self,
        repo_url: str,
        storage_options: Mapping[str, Any] | None = None,
        address: str = "local",
        workers: int = 2,
    ):
        super().__init__(repo_url, storage_options)
        from distributed import Client, LocalCluster

        self._cluster = None
        if address == "local":
            self._cluster = LocalCluster(
                n_workers=max(1, int(workers)),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            self.client = Client(self._cluster)
        else:
            try:
                self.client = Client(address, timeout="20s")
            except OSError as exc:
                raise DrpError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        threads = sum(self.client.nthreads().values()) or 1
        self.capacity = 2 * threads
        self._futures: dict[Any, Job] = {}

    def submit(self, job: Job) -> None:
        first = job[0]
        future = self.client.submit(
            execute_job,
            job,
            self.repo_url,
            self.storage_options,
            key=f"job-{first.label}-{first.id}",
            pure=False,
        )
        self._futures[future] = job

    def wait(self) -> list[list[QuantumResult]]:
        from distributed import wait

        done, _ = wait(list(self._futures), return_when="FIRST_COMPLETED")
        results = []
        for future in done:
            job = self._futures.pop(future)
            try:
                results.append(future.result())
            except Exception as exc:  # a killed worker, or a task that could not run
                results.append(_lost(job, f"{type(exc).__name__}: {exc}"))
            future.release()
        return results

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _lost(job: Job, error: str) -> list[QuantumResult]:
    now = time.time()
    return [QuantumResult(spec.id, "failed", now, now, error=error, details=error) for spec in job]


def make_executor(
    repo_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    jobs: int = 1,
    dask: str | None = None,
    repo: Repository | None = None,
) -> Executor:
    """The executor for ``-j N`` / ``--dask ADDRESS``: Dask if an address is given, else serial
    in-process for one job and a process pool for more."""
    if (dask or jobs > 1) and repo_url.startswith("memory://"):
        raise DrpError(
            f"{repo_url} lives in this process only: run it with -j 1 (no pool, no Dask)"
        )
    if dask:
        return DaskExecutor(repo_url, storage_options, dask, jobs)
    if jobs <= 1:
        return SerialExecutor(repo_url, storage_options, repo)
    return ProcessPoolExecutor(repo_url, storage_options, jobs)


# -- driving a run -----------------------------------------------------------------------------


@dataclass
class RunSummary:
    """How a run ended: counts per stage and status, the failures and the blocked quanta."""

    counts: dict[str, dict[str, int]]
    failures: list[tuple[Quantum, QuantumResult]] = field(default_factory=list)
    blocked: list[Quantum] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def totals(self) -> dict[str, int]:
        """Number of quanta per status over all stages."""
        return {s: sum(c[s] for c in self.counts.values()) for s in STATUSES}

    @property
    def ok(self) -> bool:
        """True if no quantum failed (and so none was blocked)."""
        return not self.failures

    def describe(self) -> str:
        """The summary as text: one line per stage, then each failure with its error."""
        t = self.totals
        lines = [
            f"{t['done']} done, {t['skipped']} skipped, {t['failed']} failed, "
            f"{t['blocked']} blocked in {self.elapsed:.1f} s"
        ]
        width = max((len(k) for k in self.counts), default=0)
        for label, c in self.counts.items():
            parts = ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s]) or "no quanta"
            lines.append(f"  {label:<{width}}  {parts}")
        for quantum, result in self.failures:
            lines.append(f"FAILED {quantum}: {result.error}")
        if self.blocked:
            lines.append(
                f"blocked (an input failed): {len(self.blocked)} quanta, e.g. {self.blocked[0]}"
            )
        return "\n".join(lines)


def execute_graph(
    graph: QuantumGraph, executor: Executor, progress: Progress | None = None
) -> RunSummary:
    """Run every quantum of the graph whose status is ``run``; see the module documentation."""
    started = time.time()
    progress = progress or Progress()
    stage_rank = {label: i for i, label in enumerate(graph.pipeline.labels)}
    downstream = graph.downstream()
    counts = {label: dict.fromkeys(STATUSES, 0) for label in graph.pipeline.labels}
    jobs = graph.jobs()
    job_of = {qid: j for j, job in enumerate(jobs) for qid in job}
    for qid, quantum in graph.quanta.items():
        if qid not in job_of:
            counts[quantum.label]["skipped"] += 1
    # a job waits for the distinct quanta outside it that its quanta depend on
    waiting = [
        len({u for q in job for u in graph.quanta[q].upstream if job_of.get(u, j) != j})
        for j, job in enumerate(jobs)
    ]
    rank = [max(stage_rank[graph.quanta[q].label] for q in job) for job in jobs]
    ready = [(-rank[j], j) for j, n in enumerate(waiting) if not n]
    heapq.heapify(ready)
    progress.start({label: sum(graph.quanta[q].label == label for q in job_of) for label in counts})
    summary = RunSummary(counts)
    in_flight = 0
    finished: set[str] = set()

    submitted: set[int] = set()

    def block(failed: str) -> None:
        """Mark as blocked what can no longer run: the quanta downstream of a failed one, and
        all of any job not yet submitted that holds one of them (it cannot run as a whole)."""
        stack = list(downstream[failed])
        while stack:
            qid = stack.pop()
            if qid in finished or qid not in job_of:
                continue
            finished.add(qid)
            blocked = graph.quanta[qid]
            counts[blocked.label]["blocked"] += 1
            summary.blocked.append(blocked)
            progress.advance(blocked.label, "blocked")
            stack.extend(downstream[qid])
            if job_of[qid] not in submitted:
                stack.extend(jobs[job_of[qid]])

    try:
        while ready or in_flight:
            while ready and in_flight < executor.capacity:
                _, j = heapq.heappop(ready)
                executor.submit([make_spec(graph, graph.quanta[q]) for q in jobs[j]])
                submitted.add(j)
                in_flight += 1
            for job_results in executor.wait():
                in_flight -= 1
                finished.update(result.id for result in job_results)
                for result in job_results:
                    quantum = graph.quanta[result.id]
                    counts[quantum.label][result.status] += 1
                    message = f"{quantum.short_id}: {result.error}"
                    progress.advance(quantum.label, result.status, message)
                    if result.status == "done":
                        for d in {job_of[d] for d in downstream[result.id] if d in job_of}:
                            if d != job_of[result.id]:
                                waiting[d] -= 1
                                if waiting[d] == 0:
                                    heapq.heappush(ready, (-rank[d], d))
                        continue
                    summary.failures.append((quantum, result))
                    log.debug("quantum %s failed:\n%s", quantum, result.details)
                    block(result.id)
    finally:
        progress.finish()
    summary.elapsed = time.time() - started
    unaccounted = set(job_of) - finished
    if unaccounted:  # a framework bug, never the data's fault: say so rather than report success
        example = graph.quanta[next(q for q in job_of if q in unaccounted)]
        raise DrpError(
            f"internal error: {len(unaccounted)} quanta were never run nor blocked, e.g. {example}"
        )
    return summary


def run_graph(
    repo: Repository,
    graph: QuantumGraph,
    *,
    jobs: int = 1,
    dask: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Prepare the repository for a graph (output run, dataset types, tract records) and run it.

    Parameters
    ----------
    repo
        The repository; workers open their own from its URL and storage options.
    graph
        From :func:`stages.framework.graph.build_graph`.
    jobs
        Worker processes (1: serially in this process).
    dask
        Dask scheduler address, or ``local`` for a local cluster of ``jobs`` processes.
    progress
        Where to report progress (see :func:`stages.framework.progress.make_progress`).
    """
    prepare_run(repo, graph)
    executor = make_executor(
        repo.storage.url, repo.storage.storage_options, jobs=jobs, dask=dask, repo=repo
    )
    with executor:
        return execute_graph(graph, executor, progress)
