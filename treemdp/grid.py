"""One grid for every study: run names, the batch plan, resume, the atomic results table, executors.

A *study* is a kind of run: the toy sweep (:class:`treemdp.sweep.ToyStudy`), the lab
(:class:`treemdp.lab.store.LabStudy`), ... It knows its settings, how to compute a batch of runs of
one shape and how to write one run's folder (:class:`Study`). The grid does the rest, once for
every study::

    names    run_names(study, configs)            loss=dpo,beta=0.1,seed=3 (+ every field that varies)
    plan     plan_batches(study, configs, workers) stacks by shape, fixed by the grid alone
    resume   finished_runs(out, names, configs)    a folder with summary.json and the same config.json
    run      one task per stack: compute it whole, write each unfinished run's folder atomically,
             return their rows; the parent keeps OUT/results.csv current (atomic) after every task
    where    in this process, a local process pool, a Dask cluster or SLURM (:mod:`treemdp.executors`)

A stack with an unfinished run is recomputed whole (finished runs are computed, not rewritten), so
an interrupted grid resumed later, or one spread over processes or machines, gives every run the
numbers of an uninterrupted single-process one, bit for bit: a stacked run's last bits can depend
on the stack, and the stacks depend on the grid (and the ``workers`` it is cut for) only.

    from treemdp.grid import run_grid
    table = run_grid(MyStudy(), configs, "runs/my-grid", executor="dask:local", workers=2)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence

import pandas as pd

from .errors import UserError

RESULTS = "results.csv"
LAYOUTS = ("equal", "fill")


# ----- the protocol ---------------------------------------------------------------------------------
class Study:
    """What a kind of run tells the grid. Subclass it and give :meth:`run_batch` and
    :meth:`write_run`; every other member has a default. A study is sent to worker processes and
    cluster nodes (pickled), so keep its state small: options such as an output format.

    Settings: any dataclass with ``to_dict()`` (JSON-able, what ``config.json`` holds) and
    ``validate()`` (returns itself or raises :class:`~treemdp.errors.UserError`).
    """

    #: The progress bar's label.
    label: str = "grid"
    #: Settings always in a run's folder name, in this order; other settings join when they vary.
    name_fields: tuple[str, ...] = ("seed",)
    #: Most runs of one shape computed as one stack (see :meth:`batch_limit`).
    max_batch: int = 1
    #: How a shape's runs are cut into stacks: ``"equal"`` consecutive parts whose sizes differ by
    #: at most one, or ``"fill"`` parts of ceil(runs / parts), the last one smaller.
    layout: str = "equal"
    #: With fewer shapes than workers, cut each shape into a multiple of the workers it can keep
    #: busy (the stacks then depend on ``workers`` too).
    spread: bool = False
    #: Under the local executor, grids with less work than this (sum of :meth:`cost`) run in this
    #: process: starting worker processes costs seconds.
    parallel_work: float = 0

    def shape(self, config) -> Hashable:
        """Runs of equal shape may be computed in one stack (default: all of them)."""
        return ()

    def batch_limit(self, config) -> int:
        """Most runs of this config's shape in one stack (default :attr:`max_batch`)."""
        return self.max_batch

    def cost(self, config) -> float:
        """Relative work of one run: orders the stacks (largest first) and drives the progress bar."""
        return 1.0

    def check(self, configs: Sequence) -> None:
        """Fail on bad input (UserError) before any work, e.g. read every data file once."""

    def run_batch(self, configs: Sequence, on_work: Callable[[float], None]) -> list:
        """Compute configs of one shape together; one result per config, in order. Call
        ``on_work(w)`` as work is done (``w`` in :meth:`cost` units, summed over the stack)."""
        raise NotImplementedError

    def write_run(self, folder: Path, config, result) -> dict:
        """Write one run's folder (atomically: :func:`treemdp.runs.atomic_directory`), with at least
        ``config.json`` (``config.to_dict()``) and ``summary.json``; return the summary."""
        raise NotImplementedError

    def format_value(self, value) -> str:
        """A setting's value in a folder name (:func:`format_value`)."""
        return format_value(value)

    def name_keys(self, config: dict, varying: list[str]) -> list[str]:
        """The settings in this run's folder name (default :attr:`name_fields`, then ``varying``)."""
        return [*self.name_fields, *varying]

    def result_row(self, name: str, config: dict, summary: dict) -> dict:
        """One row of results.csv: the run's name, every setting, every scalar of its summary."""
        return {"run": name, **config, **{k: v for k, v in summary.items() if not isinstance(v, (list, dict))}}


@dataclasses.dataclass
class Job:
    """One grid folder to fill: a study, its configs, their folder names (default :func:`run_names`)."""

    study: Study
    configs: list
    out: Path
    names: Optional[list] = None
    replace_changed: bool = False


# ----- names --------------------------------------------------------------------------------------
def format_value(value) -> str:
    """A setting's value as the default study spells it in folder names (floats ``:g``, lists a-b-c)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value)


def run_names(study: Study, configs: Sequence) -> list[str]:
    """A folder name per config: ``key=value`` for :meth:`Study.name_keys` (the study's fixed fields
    plus every setting that takes more than one value in the grid), comma-separated."""
    dicts = [c.to_dict() for c in configs]
    varying = [k for k in dicts[0] if k not in study.name_fields
               and len({json.dumps(d[k]) for d in dicts}) > 1] if dicts else []
    names = [",".join(f"{k}={study.format_value(d[k])}" for k in study.name_keys(d, varying)).replace(os.sep, "_")
             for d in dicts]
    if len(set(names)) != len(names):
        raise UserError("the grid repeats a run")
    return names


# ----- the plan -----------------------------------------------------------------------------------
def plan(shapes: Sequence[Hashable], limits: Sequence[int], *, workers: int = 1, spread: bool = False,
         layout: str = "equal") -> list[list[int]]:
    """The stacks of a grid: lists of indices, by shape (first-seen order), each shape's runs in grid order.

    A shape of n runs whose first run allows at most ``limits[i]`` per stack is cut into
    ``parts = ceil(n / limit)`` stacks; with ``spread`` and fewer shapes than workers, ``parts`` is
    rounded up to a multiple of ``workers // shapes`` so they all finish together. ``layout``
    ``"equal"``: sizes differ by at most one; ``"fill"``: ceil(n / parts) each, the last smaller.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(shapes):
        groups.setdefault(key, []).append(i)
    share = max(1, workers // len(groups)) if spread and groups else 1
    batches = []
    for idx in groups.values():
        n, size = len(idx), max(1, int(limits[idx[0]]))
        parts = math.ceil(math.ceil(n / size) / share) * share if n > 1 else 1
        if layout == "fill":
            step = math.ceil(n / parts)
            batches += [idx[i:i + step] for i in range(0, n, step)]
        else:
            small, extra = divmod(n, parts)
            starts = [p * small + min(p, extra) for p in range(parts + 1)]
            batches += [idx[a:b] for a, b in zip(starts, starts[1:]) if b > a]
    return batches


def plan_batches(study: Study, configs: Sequence, workers: int = 1) -> list[list[int]]:
    """:func:`plan` with the study's shapes, limits and rules: the one planner of every grid."""
    return plan([study.shape(c) for c in configs], [study.batch_limit(c) for c in configs], workers=workers,
                spread=study.spread, layout=study.layout)


# ----- a grid folder ------------------------------------------------------------------------------
def json_text(obj) -> str:
    """JSON as every run folder writes it (indented, NaN allowed, UTF-8 kept)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n"


def clean_partial(out: Path) -> None:
    """Remove hidden temp folders/files that an interrupted atomic write left behind in ``out``."""
    for path in Path(out).glob(".*"):
        if ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _stored_config(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished_runs(out: Path, names: Sequence[str], configs: Sequence, *, replace_changed: bool = False
                  ) -> tuple[dict, list[int]]:
    """(rows ``(name, stored config, summary)`` of the runs already finished in ``out`` with the same
    settings, indices of the others), for any settings dataclass with ``to_dict``.

    A folder with a ``summary.json`` is finished; if it holds other settings (or an unreadable
    ``config.json``) that is an error naming them, unless ``replace_changed`` (then it is redone).
    """
    done, todo = {}, []
    for i, (name, config) in enumerate(zip(names, configs)):
        run_dir = Path(out) / name
        if (run_dir / "summary.json").is_file():
            wanted, stored = config.to_dict(), _stored_config(run_dir)
            if stored == wanted:
                try:
                    done[name] = (name, stored, json.loads((run_dir / "summary.json").read_text()))
                    continue
                except (OSError, json.JSONDecodeError):
                    pass  # unreadable summary: run it again
            elif not replace_changed:
                changed = sorted(k for k, v in wanted.items() if (stored or {}).get(k) != v)
                raise UserError(f"{str(run_dir)!r} holds a run with other settings "
                                f"({', '.join(changed) or 'config.json'}); use another --out or remove it")
        todo.append(i)
    return done, todo


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV table atomically (:func:`treemdp.runs.atomic_file`): a reader never sees half of it."""
    from .files import atomic_file
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_results(out: str | Path, *, what: str = "grid") -> pd.DataFrame:
    """A grid folder's results.csv (one row per finished run); a UserError naming ``what`` if missing."""
    path = Path(out) / RESULTS
    if not path.is_file():
        raise UserError(f"{str(out)!r} holds no {what} results ({RESULTS} missing)")
    return pd.read_csv(path)


# ----- one task: a stack ----------------------------------------------------------------------------
def run_stack(study: Study, configs: Sequence, on_work: Callable[[float], None] = lambda w: None) -> list:
    """Results of configs of one stack (the study's :meth:`~Study.run_batch`)."""
    return study.run_batch(list(configs), on_work)


def _compute_and_write(study: Study, batch: list[tuple[str, Any]], out: Path, finished: frozenset,
                       on_work: Callable[[float], None]) -> list[tuple[str, dict, dict]]:
    """Compute one stack whole and write every run of it not in ``finished``; their result rows."""
    results = run_stack(study, [c for _, c in batch], on_work)
    rows = []
    for (name, config), result in zip(batch, results):
        if name not in finished:
            summary = study.write_run(out / name, config, result)
            rows.append((name, config.to_dict(), summary))
    return rows


def task(study: Study, batch: list[tuple[str, Any]], out: str, finished: frozenset, threads: int,
         on_work: Optional[Callable[[float], None]] = None) -> list[tuple[str, dict, dict]]:
    """What an executor runs for one stack (a worker process, a Dask worker, a SLURM job): compute
    it with ``threads`` torch threads, write its run folders, return their rows. ``on_work`` (local
    pool only: :class:`treemdp.progress.StepReports`) moves the parent's bar inside the stack."""
    from .engine import torch_threads
    with torch_threads(threads):
        return _compute_and_write(study, batch, Path(out), finished, on_work or (lambda w: None))


# ----- the grid -----------------------------------------------------------------------------------
def run_grid(study: Study, configs: Sequence, out: str | Path, *, names: Optional[Sequence[str]] = None,
             executor: str | Executor | None = None, workers: int = 1, progress: bool = False,
             replace_changed: bool = False, desc: Optional[str] = None, **executor_options) -> pd.DataFrame:
    """Compute every config of ``study`` not yet finished in ``out``; write its folder; keep
    ``out/results.csv`` current. Rerunning resumes.

    Args:
        study: the kind of run (:class:`Study`).
        configs: its settings, one per run (validated by the caller).
        out: the grid folder; run ``names[i]`` goes to ``out/names[i]``.
        names: folder names (default :func:`run_names`).
        executor: ``None``/``"local"`` (this process, or a pool of ``workers`` spawned processes),
            ``"dask:local"``, ``"dask:tcp://HOST:PORT"``, ``"slurm"``, ``"slurm:local"``, or any
            :class:`concurrent.futures.Executor` (see :func:`treemdp.executors.open_executor`).
        workers: processes (local pool, ``dask:local``); the stacks are cut for this many workers
            where the study :attr:`~Study.spread`\\ s them.
        progress: a tqdm bar over the runs.
        replace_changed: redo a finished run whose stored settings differ from its config
            (default: refuse, naming it).
        desc: the bar's label (default the study's label and the folder's name).
        **executor_options: for SLURM (``partition``, ``time``, ``gpus``, ``cpus``, ``mem_gb``,
            ``folder``): :class:`treemdp.executors.SlurmOptions`.

    Returns:
        results.csv as a DataFrame, one row per config, in ``configs`` order.
    """
    job = Job(study, list(configs), Path(out), list(names) if names is not None else None, replace_changed)
    return run_grids([job], executor=executor, workers=workers, progress=progress, desc=desc,
                     **executor_options)[0]


def run_grids(jobs: Sequence[Job], *, executor: str | Executor | None = None, workers: int = 1,
              progress: bool = False, desc: Optional[str] = None, **executor_options) -> list[pd.DataFrame]:
    """:func:`run_grid` for several grid folders at once, sharing one executor."""
    from .executors import is_local, open_executor
    from .files import check_writable
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    rows: list[dict[str, tuple]] = []
    stacks: list[tuple[int, list[tuple[str, Any]], frozenset]] = []
    for j, job in enumerate(jobs):
        job.names = list(job.names) if job.names is not None else run_names(job.study, job.configs)
        if len(job.names) != len(job.configs) or len(set(job.names)) != len(job.names):
            raise UserError("a grid needs one distinct name per config")
        job.study.check(job.configs)
        job.out = check_writable(job.out)
        job.out.mkdir(parents=True, exist_ok=True)
        clean_partial(job.out)
        done, _ = finished_runs(job.out, job.names, job.configs, replace_changed=job.replace_changed)
        rows.append(done)
        # The stacks are fixed by the whole grid, not by what is left to do.
        finished = frozenset(done)
        for idx in plan_batches(job.study, job.configs, workers):
            batch = [(job.names[i], job.configs[i]) for i in idx]
            if any(name not in finished for name, _ in batch):
                stacks.append((j, batch, finished.intersection(name for name, _ in batch)))
    cost = [sum(jobs[j].study.cost(c) for _, c in batch) for j, batch, _ in stacks]
    order = sorted(range(len(stacks)), key=lambda s: -cost[s])  # largest first: workers finish together
    stacks, cost = [stacks[s] for s in order], [cost[s] for s in order]

    def save(j: int) -> None:
        job = jobs[j]
        write_table(pd.DataFrame([job.study.result_row(*rows[j][n]) for n in job.names if n in rows[j]]),
                    job.out / RESULTS)

    for j in range(len(jobs)):
        if rows[j]:
            save(j)
    from tqdm.auto import tqdm
    total = sum(len(b) for _, b, _ in stacks)
    label = desc or (f"{jobs[0].study.label} {jobs[0].out.name}" if jobs else "grid")
    bar = tqdm(total=total, disable=not progress or not total, unit="run", desc=label,
               bar_format="{l_bar}{bar}| {n:.0f}/{total} runs [{elapsed}<{remaining}]")
    in_process = is_local(executor) and (workers == 1 or len(stacks) <= 1
                                         or sum(cost) < max(job.study.parallel_work for job in jobs))
    try:
        if in_process:
            for (j, batch, skip), work in zip(stacks, cost):
                before = bar.n
                on_work = lambda w, k=len(batch), c=work: bar.update(w * k / c if c else 0)  # noqa: E731
                for row in _compute_and_write(jobs[j].study, batch, jobs[j].out, skip, on_work):
                    rows[j][row[0]] = row
                bar.n = before + len(batch)
                bar.refresh()
                save(j)
        elif stacks:
            import contextlib
            import multiprocessing
            from concurrent.futures import FIRST_COMPLETED, wait

            from .progress import StepReports
            # A local pool reports steps through a manager's queue, so the bar moves inside a stack;
            # other executors (Dask, SLURM) move it when a stack is written.
            steps_shown = progress and is_local(executor)
            with open_executor(executor, workers, **executor_options) as pool, \
                    (multiprocessing.get_context("spawn").Manager() if steps_shown
                     else contextlib.nullcontext()) as manager:
                threads = getattr(pool, "threads", 1)
                reports = StepReports(manager, bar)
                futures = {pool.submit(task, jobs[j].study, batch, str(jobs[j].out), skip, threads,
                                       reports.callback(k, len(batch), work)): (k, j, batch)
                           for k, ((j, batch, skip), work) in enumerate(zip(stacks, cost))}
                pending = set(futures)
                while pending:
                    done_now, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    reports.drain()
                    for future in done_now:
                        k, j, batch = futures[future]
                        for row in future.result():
                            rows[j][row[0]] = row
                        reports.finish(k, len(batch))
                        save(j)
    finally:
        bar.close()
        # Runs that workers finished while this process was interrupted are on disk: list them too.
        for j, job in enumerate(jobs):
            try:
                finished, _ = finished_runs(job.out, job.names, job.configs, replace_changed=True)
            except OSError:
                continue
            if finished.keys() - rows[j].keys():
                rows[j].update(finished)
                save(j)
    return [pd.DataFrame([job.study.result_row(*rows[j][n]) for n in job.names]) for j, job in enumerate(jobs)]


def compute(study: Study, configs: Sequence, *, progress: bool = False, desc: Optional[str] = None) -> list:
    """Every config's result in memory (no folders), in ``configs`` order, in this process: the
    same plan (:func:`plan_batches`, one worker) as a grid folder, so the same numbers."""
    configs = list(configs)
    from tqdm.auto import tqdm
    results: list = [None] * len(configs)
    stacks = plan_batches(study, configs)
    with tqdm(total=len(configs), desc=desc or study.label, unit="run", leave=False, disable=not progress,
              bar_format="{l_bar}{bar}| {n:.0f}/{total} runs [{elapsed}<{remaining}]") as bar:
        for idx in stacks:
            work = sum(study.cost(configs[i]) for i in idx)
            before = bar.n
            out = run_stack(study, [configs[i] for i in idx],
                            lambda w, k=len(idx), c=work: bar.update(w * k / c if c else 0))
            for i, result in zip(idx, out):
                results[i] = result
            bar.n = before + len(idx)
            bar.refresh()
    return results


__all__ = ["Study", "Job", "run_grid", "run_grids", "compute", "run_names", "plan", "plan_batches", "finished_runs",
           "clean_partial", "write_table", "read_results", "json_text", "task", "RESULTS"]
