"""Lab run folders: write each finished run atomically, resume an interrupted grid, load tidy tables.

Layout of a grid folder (``treemdp lab run|bon --out DIR``)::

    DIR/results.csv             one row per finished run: its name, every setting, its summary
    DIR/<run>/config.json       every LabConfig field (the run reruns exactly from it)
    DIR/<run>/summary.json      peak / final gains, KL, frontier at the final KL, ...
    DIR/<run>/curve.csv         one row per logged step (daa, rlhf) or per (proxy, n) (bon); or .parquet
    DIR/<run>/frontier.csv      the gold and win-rate frontiers of the run's reference
    DIR/<run>/data.json         its demonstrations and pairs (the --data format)

The grid itself (names, stacks, resume, ``results.csv``, executors) is :mod:`treemdp.grid`; this
module is the lab's study on it (:class:`LabStudy`). Each run folder is written into a hidden
sibling and renamed into place; ``results.csv`` is rewritten after every batch. Rerunning the same command skips finished runs, so an interrupt
loses at most the batches in flight. :func:`load_lab` reads one or more grid folders back as
pandas frames (curves with the run's settings as columns).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..errors import UserError
from ..grid import RESULTS, Study, json_text, run_grid
from ..grid import run_names as grid_names
from ..runs import atomic_directory
from .config import IGNORED, LabConfig, shape_key
from .runner import BON_COLUMNS, MAX_BATCH, STEP_COLUMNS, LabResult, run_batch, run_work

#: Below this many run-steps a grid runs in this process (starting workers costs seconds).
PARALLEL_WORK = 50_000
FORMATS = ("csv", "parquet")
#: Settings copied onto every curve row by :func:`load_lab` (with ``run``).
CURVE_KEYS = ("method", "loss", "beta", "pairs", "seed", "hidden_size", "policy", "gold", "batch_size", "lr",
              "label_temperature", "pair_source", "rm", "tree")


class LabStudy(Study):
    """The lab on the grid (:mod:`treemdp.grid`): LabConfig runs, stacked by
    :func:`~treemdp.lab.config.shape_key` (at most :data:`~treemdp.lab.runner.MAX_BATCH` per stack,
    equal parts), each written by :func:`write_lab_run`."""

    label = "lab"
    name_fields = ("method", "loss", "beta", "pairs", "seed")
    max_batch = MAX_BATCH
    parallel_work = PARALLEL_WORK

    def __init__(self, fmt: str = "csv"):
        self.fmt = fmt

    def shape(self, config: LabConfig):
        return shape_key(config)

    def cost(self, config: LabConfig) -> float:
        return run_work(config)

    def run_batch(self, configs, on_work):
        return run_batch(configs, on_work=on_work)

    def write_run(self, folder: Path, config: LabConfig, result: LabResult) -> dict:
        write_lab_run(result, folder, fmt=self.fmt)
        return result.summary

    def name_keys(self, config: dict, varying: list[str]) -> list[str]:
        """Loss only for DAA runs, beta not for best-of-n (the settings a method ignores)."""
        return [k for k in [*self.name_fields, *varying] if k not in IGNORED[config["method"]]]

    def result_row(self, name: str, config: dict, summary: dict) -> dict:
        """The run's name, every setting (lists as ``1-4-16``), every scalar of its summary."""
        row = {"run": name, **{k: self.format_value(v) if isinstance(v, list) else v for k, v in config.items()}}
        row.update({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})  # loss "" for RLHF, ...
        return row


def run_names(configs: Sequence[LabConfig]) -> list[str]:
    """A folder name per run: ``method=daa,loss=dpo,beta=0.1,pairs=64,seed=3`` plus every other
    setting that varies in the grid (loss only for DAA runs, beta not for best-of-n)."""
    return grid_names(LabStudy(), configs)


def write_lab_run(result: LabResult, out_dir: str | Path, *, fmt: str = "csv") -> Path:
    """Write one :class:`~treemdp.lab.runner.LabResult` into ``out_dir`` (see the module doc)."""
    with atomic_directory(out_dir) as tmp:
        (tmp / "config.json").write_text(json_text(result.config.to_dict()))
        (tmp / "data.json").write_text(json_text(result.dataset.to_json()))
        _write_table(result.curve, tmp / "curve", fmt)
        result.frontier.to_csv(tmp / "frontier.csv", index=False, float_format="%.10g")
        (tmp / "summary.json").write_text(json_text(result.summary))
    return Path(out_dir)


def _write_table(frame: pd.DataFrame, stem: Path, fmt: str) -> None:
    if fmt == "parquet":
        frame.to_parquet(stem.with_suffix(".parquet"), index=False)
    else:
        frame.to_csv(stem.with_suffix(".csv"), index=False, float_format="%.10g")


def _read_table(run_dir: Path) -> pd.DataFrame:
    if (run_dir / "curve.parquet").is_file():
        return pd.read_parquet(run_dir / "curve.parquet")
    return pd.read_csv(run_dir / "curve.csv")


def lab_sweep(configs: Sequence[LabConfig], out: str | Path, *, workers: int = 1, fmt: str = "csv",
              progress: bool = False, executor=None, **executor_options) -> pd.DataFrame:
    """Run every config not yet finished in ``out``, write its folder, keep ``results.csv`` current.

    The grid is computed in the stacks of :func:`treemdp.lab.runner.plan_batches` (fixed by the
    grid), and a stack with an unfinished run is recomputed whole, so a resumed grid, or one
    split over workers, gives the numbers of an uninterrupted single-process one.

    Args:
        configs: the grid (e.g. from :func:`grid`).
        out: the grid folder.
        workers: processes, each taking whole stacks; grids under :data:`PARALLEL_WORK` run-steps
            run in this process (with the local executor).
        fmt: ``csv`` or ``parquet`` (needs pyarrow) for each run's curve.
        progress: a progress bar advancing by steps, inside worker processes too (off by default).
        executor: where the stacks run (:func:`treemdp.grid.run_grid`): ``"local"`` (default),
            ``"dask:local"``, ``"dask:tcp://HOST:PORT"``, ``"slurm"``, ``"slurm:local"`` or an Executor.
        **executor_options: SLURM resources (:class:`treemdp.executors.SlurmOptions` fields).

    Returns:
        results.csv as a DataFrame, one row per config, in order.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow (pip install pyarrow); or use --format csv") from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    configs = [c.validate() for c in configs]
    return run_grid(LabStudy(fmt), configs, out, workers=workers, progress=progress, executor=executor,
                    **executor_options)


# ----- reading back ------------------------------------------------------------------------------------
@dataclass
class LabTables:
    """Tidy frames of one or more grid folders.

    Attributes:
        results: one row per run (results.csv), with ``folder`` and ``dir`` (the run's folder: its identity).
        curves: one row per (run, logged step) or (run, proxy, n), with the run's settings and ``dir``.
        frontiers: one row per (run, kind, lambda), with the run's settings and ``dir``.
    """

    results: pd.DataFrame
    curves: pd.DataFrame
    frontiers: pd.DataFrame


def load_lab(folders, *, curves: bool = True) -> LabTables:
    """Read grid folders written by :func:`lab_sweep` (``treemdp lab run|bon``) as tidy DataFrames."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    if not folders:
        raise UserError("no lab folder given")
    results, curve_parts, frontier_parts = [], [], []
    for folder in folders:
        folder = Path(folder)
        if not (folder / RESULTS).is_file():
            raise UserError(f"{str(folder)!r} holds no lab results ({RESULTS} missing); run 'treemdp lab run' first")
        table = pd.read_csv(folder / RESULTS)
        table["folder"] = str(folder)
        table["dir"] = [str(folder / name) for name in table["run"]]
        results.append(table)
        if not curves:
            continue
        for _, row in table.iterrows():
            keys = {k: row[k] for k in CURVE_KEYS if k in row}
            run_dir = Path(row["dir"])
            tag = dict(run=row["run"], folder=str(folder), dir=row["dir"], **keys)
            curve_parts.append(_read_table(run_dir).assign(**tag))
            frontier_parts.append(pd.read_csv(run_dir / "frontier.csv").assign(**tag))
    concat = lambda parts: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()  # noqa: E731
    results = concat(results)
    curve_parts = [part.reindex(columns=list(dict.fromkeys([*STEP_COLUMNS, *BON_COLUMNS, *part.columns])))
                   for part in curve_parts]  # step and best-of-n columns in every frame (NaN where they do not apply)
    settings = [f.name for f in dataclasses.fields(LabConfig) if f.name in results]
    keep = ~results.duplicated(settings)  # a run in two folders (the same config) counts once
    tables = LabTables(results[keep].reset_index(drop=True), concat(curve_parts), concat(frontier_parts))
    if not keep.all() and curves:
        kept = set(tables.results["dir"])
        pick = lambda t: t[t["dir"].isin(kept)].reset_index(drop=True)  # noqa: E731
        tables.curves, tables.frontiers = pick(tables.curves), pick(tables.frontiers)
    return tables


def grid(base: Optional[LabConfig] = None, **axes: Sequence) -> list[LabConfig]:
    """Every combination of the given values of LabConfig fields, validated (:func:`treemdp.sweep.grid`);
    settings a method ignores collapse to one run."""
    from ..sweep import grid as product
    return list(dict.fromkeys(product(base or LabConfig(), **axes)))


__all__ = ["lab_sweep", "load_lab", "LabTables", "LabStudy", "write_lab_run", "run_names", "grid", "RESULTS", "FORMATS"]
