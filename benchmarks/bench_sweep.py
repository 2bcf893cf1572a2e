"""Benchmark the batched sweep engine against serial ``train()`` calls, and time ``reproduce``.

    .venv/bin/python benchmarks/bench_sweep.py              # the 90-run paper grid, batched vs serial
    .venv/bin/python benchmarks/bench_sweep.py --reproduce  # also a fresh `treemdp reproduce` (~1 min)

The paper grid: 3 losses x 3 betas x 10 seeds, GRU hidden 32, 200 SFT + 1000 DAA steps, every
trajectory's probability recorded at every step. Serial time is measured on ``--serial-runs`` runs
(one per loss x beta by default) and scaled to 90; both on one torch thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from treemdp.training import train_batch
from treemdp.sweep import grid
from treemdp.training import TrainConfig, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--serial-runs", type=int, default=9, help="runs timed one by one with train()")
    parser.add_argument("--reproduce", action="store_true", help="also time a fresh `treemdp reproduce`")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = grid(TrainConfig(), loss=["dpo", "ipo", "slic"], beta=[0.01, 0.1, 0.5], seed=range(args.seeds))
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, 1 thread; load average "
          f"{os.getloadavg()[0]:.2f} (other processes slow every number below)")

    train_batch(configs[:2])  # warm-up (first-call allocations)
    started = time.perf_counter()
    results = train_batch(configs)
    batched = time.perf_counter() - started
    print(f"batched: {len(configs)} runs (hidden 32, 200 SFT + 1000 DAA steps) in {batched:.2f} s "
          f"= {batched / len(configs) * 1e3:.0f} ms per run, results and summaries included")

    step = max(1, len(configs) // args.serial_runs)
    sample = configs[::step][:args.serial_runs]
    started = time.perf_counter()
    for config in sample:
        train(config, progress=False)
    per_run = (time.perf_counter() - started) / len(sample)
    serial = per_run * len(configs)
    print(f"serial:  train() {per_run:.2f} s per run (mean of {len(sample)}) -> {serial:.1f} s for {len(configs)} runs")
    print(f"speed-up batched / serial: {serial / batched:.1f}x")
    assert all(not isinstance(r, Exception) for r in results)

    if args.reproduce:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "treemdp", "reproduce", "--out", f"{tmp}/figs", "--runs",
                            f"{tmp}/runs", "--quiet"], check=True)
            print(f"treemdp reproduce (fresh, every figure): {time.perf_counter() - started:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
