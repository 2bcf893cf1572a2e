"""Where a grid's stacks run: executors in the :class:`concurrent.futures.Executor` sense (submit ->
future), on existing engines. :func:`treemdp.grid.run_grid` submits one task per stack; the task
writes its own run folders, so an interrupted grid resumes the same way wherever it ran.

    spec                     what runs the stacks                          needs
    local (default)          this process, or a pool of --workers spawned processes
    dask:local               a distributed.LocalCluster of --workers processes, one thread each   treemdp[dask]
    dask:tcp://HOST:PORT     the workers of a running Dask scheduler                              treemdp[dask]
    slurm                    one SLURM job per stack through submitit (SlurmOptions)              treemdp[slurm]
    slurm:local              the same jobs as local processes (submitit's local executor)         treemdp[slurm]

Every executor here has a ``threads`` attribute: torch threads per task (the local pool: the
machine's cores shared between the workers; Dask: one; SLURM: its cpus per task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

from .errors import UserError

EXECUTORS = ("local", "dask:local", "dask:ADDRESS", "slurm", "slurm:local")
#: Seconds a Dask client waits for its scheduler before giving up.
DASK_TIMEOUT = 10


@dataclasses.dataclass
class SlurmOptions:
    """Resources of each SLURM job (one job per stack).

    Attributes:
        partition: the partition (``--partition``); None: the cluster's default.
        time: wall-clock limit per job in minutes.
        gpus: GPUs per job (``--gpus-per-node``).
        cpus: CPUs per job (``--cpus-per-task``); also the torch threads of a task.
        mem_gb: memory per job in GB; None: the cluster's default.
        folder: where submitit keeps each job's pickles and logs (``%j`` becomes the job id).
        extra: more submitit parameters, e.g. ``{"slurm_account": "lab", "slurm_qos": "short"}``.
    """

    partition: Optional[str] = None
    time: int = 60
    gpus: int = 0
    cpus: int = 1
    mem_gb: Optional[float] = None
    folder: str = "slurm-logs/%j"
    extra: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> "SlurmOptions":
        for name in ("time", "cpus"):
            if getattr(self, name) < 1:
                raise UserError(f"--slurm-{name} must be >= 1")
        if self.gpus < 0:
            raise UserError("--slurm-gpus must be >= 0")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise UserError("--slurm-mem-gb must be > 0")
        return self

    def parameters(self) -> dict:
        """submitit's ``update_parameters`` arguments (the ``slurm_`` ones apply on SLURM only)."""
        params = dict(timeout_min=self.time, gpus_per_node=self.gpus, cpus_per_task=self.cpus, tasks_per_node=1,
                      name="treemdp-grid")
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        return {**params, **self.extra}


def is_local(spec) -> bool:
    """True for the default executor (this process or a local pool)."""
    return spec is None or spec == "local"


def check_spec(spec: str) -> str:
    """``spec`` if it names an executor (:data:`EXECUTORS`), else a UserError listing them."""
    if spec in ("local", "dask:local", "slurm", "slurm:local") or (spec.startswith("dask:") and len(spec) > 5):
        return spec
    raise UserError(f"unknown executor {spec!r}; use local, dask:local, dask:tcp://HOST:PORT, slurm or slurm:local")


@contextlib.contextmanager
def open_executor(spec: str | Executor | None, workers: int = 1, *, slurm: Optional[SlurmOptions] = None,
                  **slurm_fields) -> Iterator[Executor]:
    """The executor a spec names, shut down on leaving (one given as an object is used as it is).

    On an error or interrupt, stacks not yet started are cancelled; finished ones are on disk.
    ``slurm`` (or its fields as keywords: ``partition=``, ``time=``, ...) sets SLURM resources.
    """
    if isinstance(spec, Executor):
        yield spec
        return
    spec = check_spec(spec or "local")
    if spec == "local":
        import multiprocessing
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        pool.threads = max(1, (os.cpu_count() or 1) // workers)  # no forked torch thread pools (spawn)
    elif spec.startswith("dask:"):
        pool = DaskExecutor(spec[len("dask:"):], workers)
    else:
        options = (slurm or SlurmOptions(**slurm_fields)).validate()
        pool = SubmititExecutor(options, cluster="local" if spec == "slurm:local" else "slurm")
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DaskExecutor(Executor):
    """Tasks on a Dask cluster: ``address`` ``"local"`` starts a ``distributed.LocalCluster`` of
    ``workers`` processes (one thread each), else a scheduler address such as ``tcp://host:8786``."""

    threads = 1

    def __init__(self, address: str, workers: int = 1):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UserError("--executor dask needs Dask: pip install 'treemdp[dask]'") from None
        self._cluster = None
        try:
            if address == "local":
                import dask
                # Dask's workers trim freed memory at 64 KiB by default (MALLOC_TRIM_THRESHOLD_), which
                # turns the engine's tensor churn into page faults (measured: 1.7x its CPU time).
                environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                           if k != "MALLOC_TRIM_THRESHOLD_"}
                with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                    self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, scheduler_port=0)
                self._client = Client(self._cluster)
            else:
                self._client = Client(address, timeout=DASK_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            if self._cluster is not None:
                self._cluster.close()
            raise UserError(f"cannot reach the Dask scheduler at {address!r}: {_first_line(error)}") from None
        self._executor = self._client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait and not cancel_futures)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


class SubmititExecutor(Executor):
    """Tasks as SLURM jobs through submitit (``cluster="slurm"``), or as local processes with the
    same job machinery (``cluster="local"``). Each ``submit`` is one job; a thread watches the
    jobs and completes their futures."""

    #: Seconds between two looks at the unfinished jobs (submitit caches SLURM's answers itself).
    poll = 0.5

    def __init__(self, options: Optional[SlurmOptions] = None, *, cluster: str = "slurm"):
        try:
            import submitit
        except ImportError:
            raise UserError("--executor slurm needs submitit: pip install 'treemdp[slurm]'") from None
        options = (options or SlurmOptions()).validate()
        try:
            self._executor = submitit.AutoExecutor(folder=Path(options.folder), cluster=cluster)
        except (RuntimeError, ValueError) as error:  # e.g. no sbatch on this machine
            raise UserError(f"cannot submit SLURM jobs here: {_first_line(error)}") from None
        self._executor.update_parameters(**options.parameters())
        self.threads = options.cpus
        self._pending: list[tuple[object, Future]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._watcher = threading.Thread(target=self._watch, name="treemdp-submitit", daemon=True)
        self._watcher.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        job = self._executor.submit(fn, *args, **kwargs)
        with self._lock:
            self._pending.append((job, future))
        return future

    def _watch(self) -> None:
        while True:
            with self._lock:
                pending, stop = list(self._pending), self._stop
            if stop and not pending:
                return
            for job, future in pending:
                if not job.done():
                    continue
                try:
                    future.set_result(job.result())
                except Exception as error:  # the job's own error, or submitit's FailedJobError
                    future.set_exception(error)
                with self._lock:
                    self._pending.remove((job, future))
            time.sleep(self.poll)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            with self._lock:
                pending, self._pending = self._pending, []
            for job, future in pending:
                job.cancel(check=False)
                future.set_exception(RuntimeError(f"job {job.job_id} cancelled"))
        with self._lock:
            self._stop = True
        if wait:
            self._watcher.join()


__all__ = ["open_executor", "is_local", "check_spec", "SlurmOptions", "DaskExecutor", "SubmititExecutor", "EXECUTORS"]
