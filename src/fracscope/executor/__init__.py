"""Where a bulk run's images are analysed: in this process (``executor=local``) or on a Dask cluster
(``executor=dask``).

Both run the same stages on an image (`fracscope.analysis`: locate, `predict_particles`, `measure_particles`, then
`fracscope.report.record.write_image_files` and `make_record`) and hand the records to one
`ReportWriter` in input order, so both write the same outputs. `ExecutorSettings` is the
``executor`` config group (conf/executor/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXECUTORS = ("local", "dask")
CLUSTERS = ("slurm", "pbs")


@dataclass(frozen=True)
class ExecutorSettings:
    """The ``executor`` config group: ``executor=local`` (the default) or ``executor=dask``.

    For Dask exactly one of `address` (an existing scheduler), `n_workers` (a LocalCluster of
    worker processes on this machine) or `cluster` (a SLURM or PBS cluster through dask-jobqueue)
    says where the workers are.
    """

    name: str = "local"
    address: str | None = None  # tcp://host:8786: a running scheduler
    n_workers: int | None = None  # a LocalCluster with this many worker processes
    cluster: str | None = None  # slurm | pbs (dask-jobqueue)
    threads_per_worker: int = 1  # images analysed at once per worker process (LocalCluster, jobqueue)
    # onnxruntime threads per image on a worker (models and learned detector); each worker thread runs
    # one image, so 1 keeps a worker's threads from competing
    model_threads: int = 1
    retries: int = 3  # an image whose worker died is run again elsewhere up to this many times
    connect_timeout_s: float = 20.0  # an unreachable scheduler is an error after this long
    # images submitted ahead per worker thread: they are committed in input order, so a slow image
    # holds back at most this many finished ones per thread
    ahead_per_thread: int = 4
    memory_limit: str = "auto"  # per worker process (LocalCluster): "auto" shares the machine's memory
    # dask-jobqueue: one job = one node's share; resources as its SLURMCluster / PBSCluster take them
    jobs: int = 1
    cores: int = 1
    processes: int = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra_directives: list[str] = field(default_factory=list)
    job_script_prologue: list[str] = field(default_factory=list)  # e.g. ["source /path/.venv/bin/activate"]

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {self.name!r}")
        if self.name != "dask":
            return
        given = [k for k in ("address", "n_workers", "cluster") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "executor=dask needs exactly one of executor.address=tcp://HOST:PORT (a running scheduler), "
                "executor.n_workers=N (a LocalCluster here) or executor.cluster=slurm|pbs"
                + (f"; got {', '.join(given)}" if given else "")
            )
        if self.cluster is not None and self.cluster not in CLUSTERS:
            raise ValueError(f"executor.cluster must be one of {list(CLUSTERS)}, got {self.cluster!r}")
        for key in ("n_workers", "threads_per_worker", "model_threads", "ahead_per_thread", "jobs", "cores",
                    "processes"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"executor.{key} must be >= 1, got {value}")
        if self.retries < 0:
            raise ValueError(f"executor.retries must be >= 0, got {self.retries}")


__all__ = ["CLUSTERS", "EXECUTORS", "ExecutorSettings"]
