"""``executor=dask``: the images of a run analysed on a Dask cluster, the report written here.

The client submits one task per image file (`fracscope.executor.work.analyse_file`), at most
`ExecutorSettings.ahead_per_thread` per worker thread ahead, and takes the results in input order:
each page's record goes to the run's one `ReportWriter`, exactly as a local run's does, so the
tables, summary, plots, review sheets and COCO file are the same. The workers write the large
per-image files (instances/, phases/, overlays/) into the output folder, which must be storage
they share with the client, each under a temporary name and then renamed.

A worker that dies mid-image has its task run again on another worker by the scheduler, up to
`retries` times (Dask's ``distributed.scheduler.allowed-failures``); the client commits each image
once, so the tables hold no duplicate and no gap. Needs ``pip install -e '.[dask]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fracscope.cli import UsageError
from fracscope.executor import ExecutorSettings
from fracscope.executor.work import FileOutcome, FileTask, ImageFailure, analyse_file

log = logging.getLogger(__name__)

DASK_EXTRA_INSTALL = "pip install -e '.[dask]'"
# Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap
# threshold: every large numpy temporary is then mmapped and unmapped again. Left unset, a worker ran the same
# images 8 % faster in one sitting (4 of 4 interleaved rounds; within noise in others: docs/BENCHMARKS.md);
# clusters this run starts leave it unset.
WORKER_DASK_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _require_distributed() -> None:
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UsageError(f"executor=dask needs Dask's distributed package: {DASK_EXTRA_INSTALL}")


def jobqueue_cluster(settings: ExecutorSettings) -> Any:
    """A dask-jobqueue SLURMCluster or PBSCluster from `settings` (no job is submitted until scaled)."""
    sigint = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
        import dask_jobqueue.runner  # noqa: F401 - the module that sets it
    except ImportError as exc:
        raise UsageError(f"executor.cluster={settings.cluster} needs dask-jobqueue: {DASK_EXTRA_INSTALL}") from exc
    finally:  # dask_jobqueue sets its own Ctrl-C handler (sys.exit) on import: keep the run's own
        signal.signal(signal.SIGINT, sigint)
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[settings.cluster]
    return cls(
        cores=settings.cores,
        processes=settings.processes,
        memory=settings.memory,
        walltime=settings.walltime,
        queue=settings.queue,
        account=settings.account,
        job_extra_directives=list(settings.job_extra_directives),
        job_script_prologue=list(settings.job_script_prologue),
        scheduler_options={"dashboard_address": ":0"},
    )


def connect(settings: ExecutorSettings) -> tuple[Any, Any]:
    """A Dask client for `settings`, and the cluster this run started (None for an existing scheduler).

    Raises
    ------
    UsageError
        When the scheduler cannot be reached within `connect_timeout_s`, or Dask is not installed.
    """
    _require_distributed()
    import dask
    from distributed import Client, LocalCluster

    # Read by a scheduler and nannies this run starts; an existing cluster keeps its own settings.
    dask.config.set({"distributed.scheduler.allowed-failures": settings.retries, **WORKER_DASK_CONFIG})
    if settings.address is not None:
        try:
            client = Client(settings.address, timeout=f"{settings.connect_timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {settings.address} within {settings.connect_timeout_s:g} s "
                f"({type(exc).__name__}); is it running, and is the address right?"
            ) from None
        return client, None
    if settings.n_workers is not None:
        cluster = LocalCluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            processes=True,
            memory_limit=settings.memory_limit,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    else:
        cluster = jobqueue_cluster(settings)
        cluster.scale(jobs=settings.jobs)
    return Client(cluster, set_as_default=False), cluster


@contextlib.contextmanager
def connected(settings: ExecutorSettings) -> Iterator[Any]:
    """A client on the cluster `settings` names, closed (with a cluster this run started) at the end."""
    client, cluster = connect(settings)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _retried(dask_scheduler: Any, key: str) -> int:
    """How often the task's worker died under it (runs on the scheduler)."""
    task = dask_scheduler.tasks.get(key)
    return int(getattr(task, "suspicious", 0) or 0) if task is not None else 0


def _worker_settings(run: Any) -> Any:
    """The run's settings as workers need them: an absolute output folder (workers may start in
    another folder) and the executor's onnxruntime threads per image."""
    detect = dict(run.detect)
    if "threads" in detect and detect["threads"] is None:
        detect["threads"] = run.executor.model_threads
    return dataclasses.replace(
        run, output=str(Path(run.output).resolve()), model_threads=run.executor.model_threads, detect=detect
    )


def analyse_on_dask(
    client: Any,
    tasks: Iterator[FileTask],
    run: Any,
    input_root: Path | None,
    review_thresholds: Callable[[], dict[str, float]],
    on_outcome: Callable[[FileTask, FileOutcome, int], None],
) -> None:
    """Run every task on `client`'s cluster; hand each outcome to `on_outcome(task, outcome, retried)` in
    input order (`retried`: how often a worker died under it).

    `review_thresholds()` is asked as each task is sent, so workers make review thumbnails only for
    particles that can still enter the sample.
    """
    settings: ExecutorSettings = run.executor
    worker_run = _worker_settings(run)
    root = str(input_root.resolve()) if input_root is not None else None
    slots = sum(client.nthreads().values()) or settings.jobs * settings.cores
    window = max(1, slots) * settings.ahead_per_thread
    pending: deque = deque()

    def submit_next() -> bool:
        task = next(tasks, None)
        if task is None:
            return False
        task = dataclasses.replace(task, review_thresholds=review_thresholds())
        future = client.submit(analyse_file, task, worker_run, root, pure=False)
        pending.append((task, future))
        return True

    while len(pending) < window and submit_next():
        pass
    while pending:
        task, future = pending[0]
        try:
            outcome = future.result()
        except Exception as exc:  # the worker died `retries` times, or the task could not run at all
            if future.status == "cancelled":
                raise RuntimeError(f"lost the Dask scheduler ({type(exc).__name__}: {exc})") from exc
            outcome = FileOutcome([ImageFailure(task.source, 0, f"{type(exc).__name__}: {exc}")])
        retried = client.run_on_scheduler(_retried, key=future.key)
        pending.popleft()
        future.release()
        on_outcome(task, outcome, retried)
        submit_next()


__all__ = ["DASK_EXTRA_INSTALL", "analyse_on_dask", "connect", "connected", "jobqueue_cluster"]
