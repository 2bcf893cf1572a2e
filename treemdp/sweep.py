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
processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from .errors import UserError
from .training import TrainConfig, TrainingDiverged, shape_key, train_batch

RESULTS = "results.csv"
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
                raise UserError(f"bad seed list {item!r}: use integers and ranges like 0-9 or 0,3,5") from None
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


def _format(value) -> str:
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:g}"
    return str(value)


def run_names(configs: Sequence[TrainConfig]) -> list[str]:
    """A directory name per config: ``loss=dpo,beta=0.1,seed=3`` plus every other field that varies."""
    dicts = [c.to_dict() for c in configs]
    fields = list(NAME_FIELDS) + [k for k in dicts[0] if k not in NAME_FIELDS
                                  and len({json.dumps(d[k]) for d in dicts}) > 1] if dicts else []
    names = [",".join(f"{k}={_format(d[k])}" for k in fields).replace(os.sep, "_") for d in dicts]
    if len(set(names)) != len(names):
        raise UserError("the grid repeats a configuration")
    return names


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


def _write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    from .runs import atomic_file
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_results(out: str | Path) -> pd.DataFrame:
    """The grid's results.csv (one row per finished run)."""
    path = Path(out) / RESULTS
    if not path.is_file():
        raise UserError(f"{str(out)!r} holds no sweep results ({RESULTS} missing)")
    return pd.read_csv(path)


# ----- writing runs -----------------------------------------------------------------------------
def _json(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n"


def _write_small(out: Path, config: TrainConfig, summary: dict) -> None:
    """A light run directory (config.json, summary.json only), written whole."""
    from .runs import atomic_directory
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text(_json(config.to_dict()))
        (tmp / "summary.json").write_text(_json(summary))


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


def _clean_partial(out: Path) -> None:
    """Remove hidden temp folders/files that an interrupted write left behind."""
    for path in out.glob(".*"):
        if ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _stored_config(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _train_and_write(batch: list[tuple[str, TrainConfig]], out: Path, light: bool, plot: bool,
                     on_step=None, finished: frozenset = frozenset()) -> list[tuple[str, dict, dict]]:
    """Train one batch and write every run of it not in ``finished``; returns their result rows.

    A batch is always trained whole (finished runs included), so every run's numbers are those of
    the uninterrupted sweep, bit for bit: a stacked run's last bits can depend on the stack.
    """
    results = train_batch([c for _, c in batch], on_step=on_step, keep_history=not light)
    rows = []
    for (name, config), result in zip(batch, results):
        if name in finished:
            continue
        summary = _write_result(out / name, config, result, light=light, plot=plot)
        rows.append((name, config.to_dict(), summary))
    return rows


def _worker(batch, out, light, plot, threads, finished):
    import torch
    torch.set_num_threads(threads)
    return _train_and_write(batch, Path(out), light, plot, finished=finished)


#: Most runs trained as one stacked computation by default (a larger group is cut into equal parts).
#: Per-run cost falls with the batch up to a few hundred runs, then rises again once the stacked
#: weights outgrow the CPU caches (measured on the paper's tree, GRU h=32, one thread: 95 ms/run
#: at 60 runs, 57 at 195, 51 at 260-390, 72 at 780).
BATCH_SIZE = 384

#: Most values (runs x trajectories x recorded steps) one batch keeps: about 1 GB of float32.
BATCH_VALUES = 2**28


def batch_limit(config: TrainConfig, *, keep_history: bool) -> int:
    """Most runs of this shape one batch may hold: every logged step's probabilities stay in
    memory until the batch is written (light sweeps keep only scalars)."""
    T = config.branching ** config.depth
    steps = (config.sft_steps + config.daa_steps) // config.log_every + 2 if keep_history and T <= config.history_limit else 64
    return max(1, BATCH_VALUES // (T * steps))


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
          progress: bool = True, replace_changed: bool = False) -> pd.DataFrame:
    """Train every config (skipping finished ones) and write run directories plus results.csv.

    Args:
        configs: the runs (see :func:`grid`).
        out: the grid directory; run ``names[i]`` goes to ``out/names[i]``.
        names: directory names (default :func:`run_names`).
        light: write only config.json and summary.json per run (no history, weights, plot).
        plot: draw each run's run.png (full runs only).
        batch_size: most runs trained as one computation.
        workers: processes training batches in parallel (1: this process).
        progress: a tqdm bar across the grid.
        replace_changed: retrain a finished run whose stored settings differ from its config
            (default: refuse, naming it).

    Returns:
        The results table (also in ``out/results.csv``), one row per config, in ``configs`` order.
    """
    configs = list(configs)
    job = Job(configs, Path(out), list(names) if names is not None else run_names(configs), light, plot,
              replace_changed)
    return sweep_many([job], batch_size=batch_size, workers=workers, progress=progress)[0]


def sweep_many(jobs: Sequence[Job], *, batch_size: int = BATCH_SIZE, workers: int = 1, progress: bool = True,
               desc: str | None = None) -> list[pd.DataFrame]:
    """:func:`sweep` for several grid directories at once, sharing one pool of workers."""
    from .runs import check_writable
    if batch_size < 1 or workers < 1:
        raise UserError("batch size and workers must be >= 1")
    rows: list[dict[str, tuple]] = []
    batches: list[tuple[int, list[tuple[str, TrainConfig]], frozenset]] = []
    for j, job in enumerate(jobs):
        if len(job.names) != len(job.configs) or len(set(job.names)) != len(job.names):
            raise UserError("sweep needs one distinct name per config")
        _check_data(job.configs)
        job.out = check_writable(job.out)
        job.out.mkdir(parents=True, exist_ok=True)
        _clean_partial(job.out)
        done, todo = _split_finished(job)
        rows.append(done)
        # The stacks are fixed by the whole grid (with the batch size and workers), not by what is
        # left to do: a resumed sweep recomputes each unfinished stack whole, so every run gets the
        # numbers of the uninterrupted sweep, bit for bit.
        finished = frozenset(done)
        groups: dict[tuple, list[tuple[str, TrainConfig]]] = {}
        for name, config in zip(job.names, job.configs):
            groups.setdefault(shape_key(config), []).append((name, config))
        for group in groups.values():
            size = min(batch_size, batch_limit(group[0][1], keep_history=not job.light))
            # Fewer shapes than workers: cut a shape into a multiple of the workers it can keep
            # busy, so they all finish together (batched cost hardly grows with runs, writing
            # run directories does); then equal parts, no small remainder.
            share = max(1, workers // len(groups))
            parts = math.ceil(math.ceil(len(group) / size) / share) * share if len(group) > 1 else 1
            size = math.ceil(len(group) / parts)
            for i in range(0, len(group), size):
                batch = group[i:i + size]
                if any(name not in finished for name, _ in batch):
                    batches.append((j, batch, finished.intersection(name for name, _ in batch)))
    # Largest computations first, so parallel workers finish together.
    batches.sort(key=lambda jb: -len(jb[1]) * jb[1][0][1].hidden_size ** 2)

    def save_table(j):
        job = jobs[j]
        ordered = [rows[j][n] for n in job.names if n in rows[j]]
        _write_csv_atomic(pd.DataFrame([result_row(*r) for r in ordered]), job.out / RESULTS)

    for j in range(len(jobs)):
        if rows[j]:
            save_table(j)
    total = sum(len(b) for _, b, _ in batches)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, disable=not progress or not total, unit="run",
               desc=desc or f"sweep {jobs[0].out.name}" if jobs else "sweep",
               bar_format="{l_bar}{bar}| {n:.0f}/{total} runs [{elapsed}<{remaining}]")
    try:
        if workers == 1 or len(batches) == 1:
            for j, batch, skip in batches:
                job = jobs[j]
                steps = max(1, batch[0][1].sft_steps + batch[0][1].daa_steps)
                done_before = bar.n
                on_step = lambda n, k=len(batch), s=steps: bar.update(n * k / s)  # noqa: E731
                for row in _train_and_write(batch, job.out, job.light, job.plot, on_step=on_step, finished=skip):
                    rows[j][row[0]] = row
                bar.n = done_before + len(batch)
                bar.refresh()
                save_table(j)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            import multiprocessing
            context = multiprocessing.get_context("spawn")  # no forked torch thread pools
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(_worker, batch, str(jobs[j].out), jobs[j].light, jobs[j].plot, threads, skip):
                           (j, batch) for j, batch, skip in batches}
                for future in as_completed(futures):
                    j, batch = futures[future]
                    for row in future.result():
                        rows[j][row[0]] = row
                    bar.update(len(batch))
                    save_table(j)
    finally:
        bar.close()
        # Runs that workers finished while this process was interrupted are on disk: list them too.
        for j, job in enumerate(jobs):
            try:
                finished, _ = _split_finished(dataclasses.replace(job, replace_changed=True))
            except OSError:
                continue
            if finished.keys() - rows[j].keys():
                rows[j].update(finished)
                save_table(j)
    return [pd.DataFrame([result_row(*rows[j][n]) for n in job.names]) for j, job in enumerate(jobs)]


def _check_data(configs: Sequence[TrainConfig]) -> None:
    """Load every data file once before any work, so bad input fails first (UserError)."""
    from .training import resolve_dataset
    from .tree import TreeMDP
    for data, branching, depth in {(c.data, c.branching, c.depth) for c in configs}:
        config = next(c for c in configs if (c.data, c.branching, c.depth) == (data, branching, depth))
        resolve_dataset(config, TreeMDP(branching, depth), None)


def finished_runs(out: Path, names: Sequence[str], configs: Sequence, *, replace_changed: bool = False
                  ) -> tuple[dict, list[int]]:
    """(rows ``(name, stored config, summary)`` of the runs already finished in ``out`` with the same
    settings, indices of the others), for any settings dataclass with ``to_dict`` (sweeps, the lab).

    A folder with a ``summary.json`` is finished; if it holds other settings (or an unreadable
    ``config.json``) that is an error naming them, unless ``replace_changed`` (then it is redone).
    """
    done, todo = {}, []
    for i, (name, config) in enumerate(zip(names, configs)):
        run_dir = out / name
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


def _split_finished(job: Job) -> tuple[dict, list]:
    """(rows of runs already finished with the same settings, (name, config) pairs to do)."""
    done, todo = finished_runs(job.out, job.names, job.configs, replace_changed=job.replace_changed)
    return done, [(job.names[i], job.configs[i]) for i in todo]


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
    grouped = table.groupby([table[k].map(_format) for k in keys], sort=False)[columns]
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


__all__ = ["grid", "parse_seeds", "run_names", "sweep", "sweep_many", "Job", "read_results", "result_row", "format_table"]
