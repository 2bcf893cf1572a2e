"""Benchmark the over-optimization lab: the 360-run DAA grid batched vs one by one, and best-of-n.

    .venv/bin/python benchmarks/bench_lab.py                 # everything (~2-4 min on 2 cores)
    .venv/bin/python benchmarks/bench_lab.py --serial-runs 3 # fewer runs timed one by one

The grid (issue 10): 4x4 tree (256 trajectories), 3 losses x 4 betas x N in {16, 64, 256} x 10 seeds
= 360 DAA runs of 1000 steps (after 200 SFT steps), GRU hidden 16, every lab quantity (gold reward,
win rate, proxy reward, KL, sqrt KL, OOD mass, feature mean, both R^2) measured at every step.
Timed three ways: ``run_lab`` in this process (one torch thread), ``lab_sweep`` with 2 worker
processes writing every run folder (what ``treemdp lab run --workers 2`` does), and runs one by one
(``run_lab([config])``, a sample scaled to 360). Best-of-n: one sort of 10^6 trajectories, then KL,
gold and win rate for n = 1 ... 10^4, and the full distribution at n = 10^4.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from treemdp.lab import BestOfN, LabConfig, best_of_n_table, run_lab
from treemdp.lab.store import grid, lab_sweep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serial-runs", type=int, default=6, help="runs timed one by one (scaled to the grid)")
    parser.add_argument("--skip-grid", action="store_true", help="only best-of-n")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread per process; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (other processes slow every number below)")

    if not args.skip_grid:
        configs = grid(LabConfig(), loss=["dpo", "ipo", "slic"], beta=[0.01, 0.05, 0.1, 0.5], pairs=[16, 64, 256],
                       seed=range(10))
        run_lab(configs[:2])  # warm-up
        started, cpu = time.perf_counter(), time.process_time()
        results = run_lab(configs)
        batched, batched_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"batched, 1 process:  {len(configs)} DAA runs x 1000 steps (4x4 tree, hidden 16, every quantity every "
              f"step) in {batched:.1f} s wall, {batched_cpu:.1f} s CPU (= the wall time on an idle core) "
              f"= {batched / len(configs) * 1e3:.0f} ms per run")
        assert all("diverged" not in r.summary for r in results)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            lab_sweep(configs, tmp, workers=2, progress=False)
            swept = time.perf_counter() - started
        print(f"batched, 2 workers:  the same grid with every run folder written (treemdp lab run --workers 2): "
              f"{swept:.1f} s")
        step = max(1, len(configs) // args.serial_runs)
        sample = configs[::step][:args.serial_runs]
        started, cpu = time.perf_counter(), time.process_time()
        for config in sample:
            run_lab([config])
        per_run = (time.perf_counter() - started) / len(sample)
        per_run_cpu = (time.process_time() - cpu) / len(sample)
        print(f"one by one:          {per_run:.2f} s wall, {per_run_cpu:.2f} s CPU per run (mean of {len(sample)}) -> "
              f"{per_run * len(configs):.0f} s for {len(configs)} runs; batched is {per_run * len(configs) / batched:.1f}x "
              f"faster (wall), {per_run_cpu * len(configs) / batched_cpu:.1f}x (CPU), in one process")

    T = 10**6
    generator = torch.Generator().manual_seed(0)
    ref = torch.rand(T, generator=generator, dtype=torch.float64)
    proxy = torch.randn(T, generator=generator, dtype=torch.float64)
    gold = torch.randn(T, generator=generator, dtype=torch.float64)
    ns = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 10_000]
    started = time.perf_counter()
    bon = BestOfN(ref, proxy)
    sorted_at = time.perf_counter() - started
    table = best_of_n_table(ref, proxy, ns, gold=gold, bon=bon)
    total = time.perf_counter() - started
    started = time.perf_counter()
    probs = BestOfN(ref, proxy).probs(10_000)
    single = time.perf_counter() - started
    print(f"best-of-n on {T:.0e} trajectories: sort {sorted_at:.2f} s; KL and E[gold] for {len(ns)} values of n up "
          f"to 1e4 {total:.2f} s in all; the full distribution at n = 1e4 (sort included) {single:.2f} s "
          f"(sums to {float(probs.sum()):.12f}; KL {table['kl'].iloc[-1]:.4f} <= bound {table['kl_bound'].iloc[-1]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
