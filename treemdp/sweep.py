"""Grids of toy runs: expand settings, batch runs that share a shape, write each run atomically.

    configs = grid(TrainConfig(), loss=["dpo", "ipo", "slic"], beta=[0.01, 0.1, 0.5], seed=range(10))
    table = sweep(configs, "runs/grid")      # one run directory per config, plus runs/grid/results.csv

Runs that share everything but loss, beta, seed and learning rates (:func:`treemdp.training.shape_key`)
are trained together by :func:`treemdp.training.train_batch` (batches sized to fit in memory:
one run at a time on huge trees). Each run lands in its own directory through
:func:`treemdp.runs.write_run` (write into a hidden folder, then rename) the moment its batch
finishes, and ``results.csv`` (one row per finished run: every setting and the summary) is
rewritten atomically after every batch. Rerunning the same sweep skips finished runs, so an
interrupted sweep loses at most the batch in flight. ``workers > 1`` spreads batches over
processes, ``executor=`` over a Dask cluster or SLURM jobs.

The machinery (folder names, the stacks, resume, results.csv, executors, progress) is
:mod:`treemdp.grid`, shared with the lab; this module is the toy track's study on it
(:class:`ToyStudy`) plus the grid expansion and the closing table.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from .errors import UserError
from .grid import RESULTS, Job as GridJob, finished_runs, json_text, run_grids
from .grid import read_results as grid_results
from .grid import run_names as grid_names
from .training import BATCH_SIZE, BATCH_VALUES, TrainConfig, TrainingDiverged, TrainStudy, batch_limit, check_data  # noqa: F401  (re-exported)

#: Fields always in a run directory's name, whether or not the grid varies them.
NAME_FIELDS = ("loss", "beta", "seed")


# ----- the grid ---------------------------------------------------------------------------------
def parse_seeds(items: Iterable[str]) -> list[int]:
    """``["0-9"]`` -> 0..9; ``["1", "4-5"]`` -> [1, 4, 5]; also ``"0,2,7"``."""
    seeds: list[int] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    low, high = (int(x) for x in part.split("-", 1))
                    if high < low:
                        raise ValueError
                    seeds.extend(range(low, high + 1))
                else:
                    seeds.append(int(part))
            except ValueError:
                raise UserError(f"bad seed list {item!r}: use integers and ranges like 0-9, 0 3 5 or 0,3,5") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seed list {' '.join(map(str, items))!r} repeats a seed")
    return seeds


def grid(base: TrainConfig | None = None, **axes: Sequence) -> list[TrainConfig]:
    """Every combination of the given values of TrainConfig fields, validated.

    Example: ``grid(loss=["dpo", "ipo"], beta=[0.1, 0.5], seed=range(3))`` gives 12 configs.
    ``base`` may be any settings dataclass with ``validate()`` (the lab's LabConfig too).
    """
    base = base or TrainConfig()
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(axes) - known)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    names = list(axes)
    values = [list(axes[name]) for name in names]
    for name, vals in zip(names, values):
        if not vals:
            raise UserError(f"--{name.replace('_', '-')} needs at least one value")
    return [dataclasses.replace(base, **dict(zip(names, combo))).validate()
            for combo in itertools.product(*values)]


def format_setting(value) -> str:
    """A setting's value in a run directory's name (floats as Python writes them, 0.1 not 0.10000)."""
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:g}"
    return str(value)


class ToyStudy(TrainStudy):
    """The toy track on the grid (:mod:`treemdp.grid`): :class:`~treemdp.training.TrainStudy`'s
    stacks, each run written in the ``train`` layout (or ``light``: config.json and summary.json
    only)."""

    name_fields = NAME_FIELDS

    def __init__(self, *, light: bool = False, plot: bool = True, batch_size: int = None, dataset=None):
        super().__init__(light=light, batch_size=batch_size, dataset=dataset)
        self.plot = plot

    def write_run(self, folder: Path, config: TrainConfig, result) -> dict:
        return _write_result(folder, config, result, light=self.light, plot=self.plot)

    def format_value(self, value) -> str:
        return format_setting(value)

    def result_row(self, name: str, config: dict, summary: dict) -> dict:
        return result_row(name, config, summary)


def run_names(configs: Sequence[TrainConfig]) -> list[str]:
    """A directory name per config: ``loss=dpo,beta=0.1,seed=3`` plus every other field that varies."""
    return grid_names(ToyStudy(), configs)


# ----- results table ----------------------------------------------------------------------------
def result_row(name: str, config: dict, summary: dict) -> dict:
    """One row of results.csv: run name, every setting, every scalar of the summary."""
    row = {"run": name, **config}
    for key, value in summary.items():
        if key in ("top_ood", "top_ood_at_peak"):
            where = "" if key == "top_ood" else "_at_peak"
            for i, item in enumerate(value, start=1):
                row[f"top{i}_ood{where}_trajectory"] = item["trajectory"]
                row[f"top{i}_ood{where}_prob"] = item["prob"]
        elif not isinstance(value, (list, dict)):
            row[key] = value
    return row


def read_results(out: str | Path) -> pd.DataFrame:
    """The grid's results.csv (one row per finished run)."""
    return grid_results(out, what="sweep")


# ----- writing runs -----------------------------------------------------------------------------
def _write_small(out: Path, config: TrainConfig, summary: dict) -> None:
    """A light run directory (config.json, summary.json only), written whole."""
    from .runs import atomic_directory
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text(json_text(config.to_dict()))
        (tmp / "summary.json").write_text(json_text(summary))


def _diverged_summary(config: TrainConfig, error: Exception) -> dict:
    return {"loss": config.loss, "beta": config.beta, "seed": config.seed, "diverged": str(error)}


def _write_result(out: Path, config: TrainConfig, result, *, light: bool, plot: bool) -> dict:
    """Write one finished run (or its divergence) and return its summary."""
    if isinstance(result, TrainingDiverged):
        summary = _diverged_summary(config, result)
        _write_small(out, config, summary)
        return summary
    if light:
        _write_small(out, config, result.summary)
    else:
        from .runs import write_run
        write_run(result, out, plot=plot)
    return result.summary


@dataclasses.dataclass
class Job:
    """One grid directory to fill: configs, their run names, how to write them."""

    configs: list
    out: Path
    names: list
    light: bool = False
    plot: bool = True
    replace_changed: bool = False


def sweep(configs: Sequence[TrainConfig], out: str | Path, *, names: Optional[Sequence[str]] = None,
          light: bool = False, plot: bool = True, batch_size: int = BATCH_SIZE, workers: int = 1,
          progress: bool = False, replace_changed: bool = False, executor=None, **executor_options) -> pd.DataFrame:
    """Train every config (skipping finished ones) and write run directories plus results.csv.

    Args:
        configs: the runs (see :func:`grid`).
        out: the grid directory; run ``names[i]`` goes to ``out/names[i]``.
        names: directory names (default :func:`run_names`).
        light: write only config.json and summary.json per run (no history, weights, plot).
        plot: draw each run's run.png (full runs only).
        batch_size: most runs trained as one computation.
        workers: processes training batches in parallel (1: this process); the batches are cut for
            this many workers, whichever executor runs them.
        progress: a tqdm bar across the grid, advancing by steps (off by default).
        replace_changed: retrain a finished run whose stored settings differ from its config
            (default: refuse, naming it).
        executor: where the batches run (:func:`treemdp.grid.run_grid`): ``"local"`` (default),
            ``"dask:local"``, ``"dask:tcp://HOST:PORT"``, ``"slurm"``, ``"slurm:local"`` or an Executor.
        **executor_options: SLURM resources (:class:`treemdp.executors.SlurmOptions` fields).

    Returns:
        The results table (also in ``out/results.csv``), one row per config, in ``configs`` order.
    """
    configs = list(configs)
    job = Job(configs, Path(out), list(names) if names is not None else run_names(configs), light, plot,
              replace_changed)
    return sweep_many([job], batch_size=batch_size, workers=workers, progress=progress, executor=executor,
                      **executor_options)[0]


def sweep_many(jobs: Sequence[Job], *, batch_size: int = BATCH_SIZE, workers: int = 1, progress: bool = False,
               desc: str | None = None, executor=None, **executor_options) -> list[pd.DataFrame]:
    """:func:`sweep` for several grid directories at once, sharing one pool of workers."""
    if batch_size < 1 or workers < 1:
        raise UserError("batch size and workers must be >= 1")
    grid_jobs = [GridJob(ToyStudy(light=job.light, plot=job.plot, batch_size=batch_size), list(job.configs),
                         Path(job.out), list(job.names), job.replace_changed) for job in jobs]
    tables = run_grids(grid_jobs, executor=executor, workers=workers, progress=progress,
                       desc=desc or (f"sweep {Path(jobs[0].out).name}" if jobs else "sweep"), **executor_options)
    for job, done in zip(jobs, grid_jobs):
        job.out = done.out
    return tables


def varying_settings(table: pd.DataFrame) -> list[str]:
    """The settings (TrainConfig fields other than the seed) that take more than one value in ``table``."""
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed" and f.name in table]
    return [f for f in fields if table[f].astype(str).nunique(dropna=False) > 1]


def format_table(table: pd.DataFrame) -> str:
    """A text summary of a results table: peak and final OOD mass, and the DAA phase's own rise over
    the SFT policy's OOD mass (``peak_ood_gain``), mean [min, max] over seeds, per combination of
    every setting that varies in the grid (never pooling settings; values spelled as in run names)."""
    if table.empty or "peak_ood_mass" not in table:
        return "(no finished runs)"
    keys = ["loss", "beta"] + [k for k in varying_settings(table) if k not in ("loss", "beta")]
    columns = [c for c in ("peak_ood_mass", "peak_ood_gain", "final_ood_mass") if c in table]
    grouped = table.groupby([table[k].map(format_setting) for k in keys], sort=False)[columns]
    stats, counts = grouped.agg(["mean", "min", "max"]), grouped.size()
    labels = [", ".join(f"{k}={v}" for k, v in zip(keys, index if isinstance(index, tuple) else (index,)))
              for index in stats.index]
    width = max(len("setting"), *map(len, labels))
    titles = {"peak_ood_mass": "peak OOD mass", "peak_ood_gain": "peak OOD gain over SFT",
              "final_ood_mass": "final OOD mass"}
    lines = [(f"{'setting':<{width}}  runs" + "".join(f"  {titles[c] + ' (mean [min, max])':<42}" for c in columns)).rstrip()]
    for label, (index, row) in zip(labels, stats.iterrows()):
        cells = "".join(f"  {_cell(row[c]):<42}" for c in columns)
        lines.append(f"{label:<{width}}  {counts[index]:>4}{cells}".rstrip())
    return "\n".join(lines)


def _cell(stats) -> str:
    return f"{stats['mean']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"


__all__ = ["grid", "parse_seeds", "run_names", "sweep", "sweep_many", "Job", "ToyStudy", "read_results", "result_row",
           "format_table", "finished_runs", "RESULTS"]
