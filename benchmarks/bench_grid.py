"""Benchmark the grid machinery (treemdp.grid): the toy and lab grids with their folders, and the
780-run zoo sweep on a 2-worker Dask LocalCluster against the local pool of 2 processes.

    .venv/bin/python benchmarks/bench_grid.py              # the 90-run grid and the 360-run lab grid
    .venv/bin/python benchmarks/bench_grid.py --dask       # also the 780-run zoo sweep: local pool vs Dask
    .venv/bin/python benchmarks/bench_grid.py --only-dask  # just that

The 90-run grid: the paper's 3 losses x 3 betas x 10 seeds (GRU hidden 32, 200 SFT + 1000 DAA steps),
``treemdp sweep --workers 2 --no-plots`` (every run folder, history included). The 360-run lab
grid: ``treemdp lab run --workers 2`` on bench_lab.py's grid. The zoo: every objective of
``treemdp losses`` (the reproduce plan's zoo) x 3 betas x 10 seeds, ``--light``, one shape.
Both sides of the Dask comparison run in this one invocation, back to back, on the same machine.
The 90- and 360-run parts use only the API that predates treemdp.grid, so the same script times an
older checkout (``PYTHONPATH=/path/to/old/checkout``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch


def _timed(label: str, fn) -> float:
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    print(f"{label}: {elapsed:.1f} s wall (load average {os.getloadavg()[0]:.2f})", flush=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dask", action="store_true", help="also the 780-run zoo sweep, local pool vs Dask")
    parser.add_argument("--only-dask", action="store_true", help="only the zoo sweep comparison")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import treemdp
    print(f"treemdp from {os.path.dirname(treemdp.__file__)}; {os.cpu_count()} cores, torch {torch.__version__}")
    from treemdp.experiments import BETAS, LOSSES
    from treemdp.reproduce import zoo_objectives
    from treemdp.sweep import grid, sweep
    from treemdp.training import TrainConfig

    if not args.only_dask:
        paper = grid(TrainConfig(), loss=list(LOSSES), beta=list(BETAS), seed=range(args.seeds))
        with tempfile.TemporaryDirectory() as tmp:
            _timed(f"toy sweep, {len(paper)} runs, 2 workers, every folder", lambda: sweep(
                paper, f"{tmp}/g", workers=2, plot=False, progress=False))
        from treemdp.lab import LabConfig
        from treemdp.lab.store import grid as lab_grid, lab_sweep
        lab = lab_grid(LabConfig(), loss=["dpo", "ipo", "slic"], beta=[0.01, 0.05, 0.1, 0.5], pairs=[16, 64, 256],
                       seed=range(args.seeds))
        with tempfile.TemporaryDirectory() as tmp:
            _timed(f"lab grid, {len(lab)} runs, 2 workers, every folder", lambda: lab_sweep(
                lab, f"{tmp}/lab", workers=2, progress=False))

    if args.dask or args.only_dask:
        zoo = grid(TrainConfig(), loss=zoo_objectives(), beta=list(BETAS), seed=range(args.seeds))
        with tempfile.TemporaryDirectory() as tmp:
            local = _timed(f"zoo sweep, {len(zoo)} runs, --light, local pool of 2", lambda: sweep(
                zoo, f"{tmp}/local", light=True, workers=2, progress=False))
            dask = _timed(f"zoo sweep, {len(zoo)} runs, --light, Dask LocalCluster of 2 (start included)", lambda: sweep(
                zoo, f"{tmp}/dask", light=True, workers=2, progress=False, executor="dask:local"))
            import pandas as pd
            a, b = (pd.read_csv(f"{tmp}/{side}/results.csv").drop(columns=["train_seconds"]) for side in ("local", "dask"))
            pd.testing.assert_frame_equal(a, b, check_exact=True)
        print(f"Dask / local pool: {dask / local:.3f} (same numbers, bit for bit: checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
