"""What the pinned kernels (treemdp/kernels.py) cost: the same work with and without the pin.

    .venv/bin/python benchmarks/bench_kernels.py            # ~1-2 min on an idle core
    .venv/bin/python benchmarks/bench_kernels.py --repeats 3

Each setting runs in its own process (the kernels are chosen at a process's first computation):
a batch of 45 paper runs (3 losses x 3 betas x 5 seeds, 200 SFT + 300 DAA steps) and 24 lab runs
(4x4 tree, 2 losses x 2 betas x 6 seeds, 300 steps). The two settings alternate, and CPU seconds
are reported beside wall seconds: on a shared machine the CPU time of a one-thread process is
what an idle core would take, so the ratio survives other load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORK = r"""
import json, time, treemdp, torch
from treemdp import kernels
from treemdp.lab import LabConfig, run_lab
from treemdp.lab.store import grid as lab_grid
from treemdp.sweep import grid
from treemdp.training import TrainConfig, train_batch
torch.set_num_threads(1)
paper = grid(TrainConfig(daa_steps=300), loss=["dpo", "ipo", "slic"], beta=[0.01, 0.1, 0.5], seed=range(5))
lab = lab_grid(LabConfig(steps=300), loss=["dpo", "ipo"], beta=[0.1, 0.5], seed=range(6))
train_batch(paper[:1])
out = {"pinned": kernels.pinned(), "capability": torch.backends.cpu.get_cpu_capability()}
for name, work in (("paper", lambda: train_batch(paper)), ("lab", lambda: run_lab(lab))):
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    out[name] = (time.perf_counter() - wall, time.process_time() - cpu)
print(json.dumps(out))
"""

SETTINGS = {"pinned": {}, "native": {"TREEMDP_KERNELS": "native"}}


def run(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE")}
    env.update(SETTINGS[setting])
    done = subprocess.run([sys.executable, "-c", WORK], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "(CPU seconds are robust to other load, wall seconds are not)")
    cpu = {s: {"paper": [], "lab": []} for s in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            out = run(setting)
            for work in ("paper", "lab"):
                cpu[setting][work].append(out[work][1])
            print(f"{setting:7s} (pinned={out['pinned']}, ATen {out['capability']}): "
                  f"45 paper runs {out['paper'][0]:.1f} s wall / {out['paper'][1]:.1f} s CPU, "
                  f"24 lab runs {out['lab'][0]:.1f} s wall / {out['lab'][1]:.1f} s CPU", flush=True)
    for work in ("paper", "lab"):
        ratio = min(cpu["pinned"][work]) / min(cpu["native"][work])
        print(f"{work}: pinned / native CPU time = {ratio:.2f} (best of {args.repeats} each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
